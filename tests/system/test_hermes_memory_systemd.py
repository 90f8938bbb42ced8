"""Hermes and its memory limit, in the right order, with limits small enough to bite
(the sandbox's memory controller is delegated, so MemoryMax= is the kernel's):

- the RSS guard acts first when the unit leaves room above it (exit 75, restarted; no
  OOM kill);
- when the unit does not (a config the check refuses), the kernel kills the worker
  mid-request: the gateway answers 503 with Retry-After (never a hang), systemd restarts
  it, and the journal and metrics say it was an OOM kill.
"""

from __future__ import annotations

import pytest

from tests.support import poll_for

from .conftest import journal, show, sysctl

pytestmark = pytest.mark.system

UNIT = "vx11-hermes.service"
MODEL = "/var/lib/vx11/models/hermes-2-pro-mistral-7b.Q4_K_M.gguf"  # the default path
SOCK = "/run/vx11-hermes/hermes.sock"
CHAT = ('{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}')


def _sh(sb, script: str, timeout: float = 90):
    return sb.exec(["sh", "-c", script], timeout=timeout)


@pytest.fixture
def small_hermes(sandbox):
    """Hermes with the tiny model, the gateway routing to it (profile full) and a drop-in
    for the unit's memory; ``setup(rss_limit, memory_max, memory_high)`` starts it."""
    original = (sandbox.etc_vx11 / "vx11.yml").read_text()
    dropin = sandbox.state / "etc-systemd-system" / f"{UNIT}.d" / "test-memory.conf"
    r = _sh(sandbox, f"/opt/vx11d/bin/python -m vx11d.hermes.testmodel {MODEL} && "
            f"chgrp vx11 {MODEL} && chmod 0640 {MODEL}")
    assert r.returncode == 0, r.stderr

    def setup(rss_limit: str, memory_max: str, memory_high: str) -> None:
        sandbox.write_config("log_level: info\nmadre:\n  profile: full\nhermes:\n"
                             f"  rss_limit: {rss_limit}\n  max_tokens: 8\n")
        dropin.parent.mkdir(exist_ok=True)
        dropin.write_text(f"[Service]\nMemoryMax={memory_max}\nMemoryHigh={memory_high}\n")
        sysctl(sandbox, "daemon-reload")
        sysctl(sandbox, "restart", UNIT)
        sysctl(sandbox, "restart", "vx11-gateway.socket")
        sysctl(sandbox, "stop", "vx11-gateway.service", check=False)

    try:
        yield sandbox, setup
    finally:
        for unit in (UNIT, "vx11-gateway.service", "vx11-gateway.socket"):
            sysctl(sandbox, "stop", unit, check=False)
            sysctl(sandbox, "reset-failed", unit, check=False)
        dropin.unlink(missing_ok=True)
        sysctl(sandbox, "daemon-reload", check=False)
        sandbox.write_config(original)
        _sh(sandbox, f"rm -f {MODEL}")


def _restarts(sb) -> int:
    return int(show(sb, UNIT, "NRestarts")["NRestarts"])


def _metric(sb, reason: str) -> float:
    r = _sh(sb, f"curl -sf --unix-socket {SOCK} http://h/metrics")
    line = [ln for ln in r.stdout.splitlines()
            if ln.startswith(f'vx11_hermes_restarts_total{{reason="{reason}"}}')]
    assert line, r.stdout[-1500:]
    return float(line[0].split()[-1])


def test_with_room_above_it_the_rss_guard_acts_before_the_kernel(small_hermes):
    sb, setup = small_hermes
    setup("50M", "200M", "150M")
    r = sb.exec(["/opt/vx11d/bin/vx11ctl", "config", "check"], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    before = _restarts(sb)
    r = _sh(sb, f"curl -s -o /dev/null -w '%{{http_code}}' --unix-socket {SOCK} "
            f"http://h/v1/chat/completions -d '{CHAT}'")
    assert r.stdout == "200", r.stdout + r.stderr  # the request in flight finishes
    poll_for(lambda: _restarts(sb) > before, 30, what="the RSS guard's restart")
    poll_for(lambda: show(sb, UNIT, "ActiveState")["ActiveState"] == "active", 30,
             what="active again")
    assert _metric(sb, "rss_guard") == 1 and _metric(sb, "oom") == 0
    assert journal(sb, "-u", UNIT, "--grep", "status=75")
    assert not journal(sb, "-u", UNIT, "--grep", "status=9/KILL")


def test_a_kernel_oom_kill_gets_503_retry_after_a_restart_and_says_oom(small_hermes):
    sb, setup = small_hermes
    # idle the worker's cgroup holds ~26 MB; loading the model needs ~45 MB
    setup("1G", "32M", "infinity")
    r = sb.exec(["/opt/vx11d/bin/vx11ctl", "config", "check"], timeout=60)
    assert r.returncode == 1 and "is not below vx11-hermes.service's MemoryMax= (32M)" \
        in r.stdout, r.stdout + r.stderr
    before = _restarts(sb)
    r = _sh(sb, "curl -s -D - -o /dev/null --max-time 60 -H \"X-VX11-Token: $(cat "
            "/etc/vx11/token)\" -H 'Content-Type: application/json' "
            f"localhost:8000/v1/chat/completions -d '{CHAT}'")
    head = r.stdout.lower()
    assert head.startswith("http/1.1 503"), r.stdout + r.stderr
    assert "retry-after: 5" in head, r.stdout
    poll_for(lambda: _restarts(sb) > before, 30, what="systemd's restart after the kill")
    assert journal(sb, "-u", UNIT, "--grep", "status=9/KILL")
    poll_for(lambda: show(sb, UNIT, "ActiveState")["ActiveState"] == "active", 30,
             what="active again")
    ev = poll_for(lambda: journal(sb, "VX11_EVENT=hermes_oom_killed"), 30,
                  what="the restarted worker's OOM line")
    assert int(ev[-1]["VX11_MEMORY_MAX"]) == 32 * 1024**2
    assert ev[-1]["MESSAGE"].startswith("the kernel killed the previous Hermes process: out "
                                        "of memory (peak ")
    assert _metric(sb, "oom") == 1
