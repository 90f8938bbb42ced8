"""vx11-hermes.service under a real systemd: limits, hardening, READY/STATUS, generation
through the unit (with MemoryDenyWriteExecute=yes), metrics that pass promtool, and the
RSS guard's exit 75 restarted by systemd."""

from __future__ import annotations

import re

import pytest

from tests.support import poll_for

from .conftest import journal, show, sysctl

pytestmark = pytest.mark.system

UNIT = "vx11-hermes.service"
MODEL = "/var/lib/vx11/models/random-weights-tiny.gguf"  # generated: fast, talks nonsense
USE_MODEL = f"  model_path: {MODEL}\n  model_sha256: ''\n"
SOCK = "/run/vx11-hermes/hermes.sock"


def _sh(sb, script: str, timeout: float = 60):
    return sb.exec(["sh", "-c", script], timeout=timeout)


@pytest.fixture
def hermes(sandbox):
    """A tiny generated model at the default path and the unit started; all undone after."""
    original = (sandbox.etc_vx11 / "vx11.yml").read_text()
    r = _sh(sandbox, f"/opt/vx11d/bin/python -m vx11d.hermes.testmodel {MODEL} && "
            f"chgrp vx11 {MODEL} && chmod 0640 {MODEL}")
    assert r.returncode == 0, r.stderr
    assert "\nhermes:\n" in original
    sandbox.write_config(original.replace("\nhermes:\n", "\nhermes:\n" + USE_MODEL, 1))
    sysctl(sandbox, "start", UNIT)
    try:
        yield sandbox
    finally:
        sysctl(sandbox, "stop", UNIT, check=False)
        sysctl(sandbox, "reset-failed", UNIT, check=False)
        sandbox.write_config(original)
        _sh(sandbox, f"rm -f {MODEL}")


def _chat(sb, tokens: int = 8):
    return _sh(sb, f"curl -s -o /dev/null -w '%{{http_code}}' --unix-socket {SOCK} "
               "http://h/v1/chat/completions -d '{\"messages\": [{\"role\": \"user\", "
               f"\"content\": \"hi\"}}], \"max_tokens\": {tokens}}}'")


def test_unit_limits_and_hardening(hermes):
    p = show(hermes, UNIT, "MemoryMax", "MemoryHigh", "Type", "PrivateNetwork",
             "MemoryDenyWriteExecute", "WatchdogUSec", "RestrictAddressFamilies")
    assert p["MemoryMax"] == "6442450944"
    assert 0 < int(p["MemoryHigh"]) < 6442450944
    assert (p["Type"], p["PrivateNetwork"], p["MemoryDenyWriteExecute"]) == (
        "notify", "yes", "yes")
    assert p["WatchdogUSec"] != "0" and p["RestrictAddressFamilies"] == "AF_UNIX"
    r = hermes.exec(["systemd-analyze", "security", "--no-pager", UNIT], timeout=60)
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout).group(1))
    assert score <= 1.0, r.stdout[-2000:]


def test_ready_status_generation_and_metrics(hermes):
    st = show(hermes, UNIT, "ActiveState", "StatusText")
    assert st["ActiveState"] == "active" and "model unloaded" in st["StatusText"]
    r = _chat(hermes)
    assert r.stdout == "200", r.stdout + r.stderr  # generated inside the hardened unit
    poll_for(lambda: "model loaded" in show(hermes, UNIT, "StatusText")["StatusText"], 10,
             what="STATUS model loaded")
    r = _sh(hermes, f"curl -sf --unix-socket {SOCK} http://h/metrics > /tmp/hm.prom && "
            "promtool check metrics < /tmp/hm.prom && grep -c '^vx11_hermes_' /tmp/hm.prom")
    assert r.returncode == 0, r.stdout + r.stderr
    assert int(r.stdout.strip().splitlines()[-1]) > 10
    assert journal(hermes, "VX11_EVENT=hermes_model_loaded")


def test_rss_guard_exits_75_and_systemd_restarts_it(hermes):
    hermes.write_config("log_level: info\nhermes:\n  rss_limit: 50M\n" + USE_MODEL)
    sysctl(hermes, "restart", UNIT)  # idle RSS ~40 MiB: under the limit until a load
    before = int(show(hermes, UNIT, "NRestarts")["NRestarts"])
    assert _chat(hermes).stdout == "200"  # the in-flight request finishes
    poll_for(lambda: int(show(hermes, UNIT, "NRestarts")["NRestarts"]) > before, 30,
             what="a restart after the RSS guard")
    ev = journal(hermes, "VX11_EVENT=hermes_rss_guard")
    assert ev and int(ev[-1]["VX11_LIMIT_BYTES"]) == 50 * 1024**2
    assert journal(hermes, "-u", UNIT, "--grep", "status=75")
    poll_for(lambda: show(hermes, UNIT, "ActiveState")["ActiveState"] == "active", 30,
             what="active again")
    r = _sh(hermes, f"curl -sf --unix-socket {SOCK} http://h/metrics")
    assert 'vx11_hermes_restarts_total{reason="rss_guard"} 1.0' in r.stdout
