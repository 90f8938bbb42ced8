"""A mistaken match-everything rule under a real systemd (issue 14): D-Bus, logind and the
gettys survive, the circuit breaker stops enforcement before any signal, says so in
STATUS, the journal and a metric, and `vx11ctl reaper rearm` resumes it."""

from __future__ import annotations

import json
import re

import pytest

from tests.support import poll_for

from .conftest import REPO, journal, show, sysctl

pytestmark = pytest.mark.system

UNIT = "vx11-reaper.service"
CTL = "/opt/vx11d/bin/vx11ctl"
CATCHALL = "{name: catchall, comm: '.*', action: terminate, grace: 1}"
BAIT = "import os, time\nopen('/proc/self/comm', 'w').write('bait')\ntime.sleep(600)\n"
ONE = "import os, time\nopen('/proc/self/comm', 'w').write('onebait')\ntime.sleep(600)\n"


def reaper_config(original: str, rule: str) -> str:
    """The sandbox's config with its reaper section replaced."""
    head = re.split(r"^reaper:\n", original, flags=re.M)[0]
    return head + f"reaper:\n  interval: 1\n  rules:\n    - {rule}\n"


def metric(sb, name: str) -> float | None:
    r = sb.exec(["curl", "-sf", "http://127.0.0.1:9713/metrics"], timeout=10)
    m = re.search(rf"^{name} (\S+)$", r.stdout, re.M)
    return float(m.group(1)) if m else None


def count(sb, comm: str) -> int:
    r = sb.exec(["pgrep", "-c", "-x", comm], timeout=10)
    return int(r.stdout.strip() or 0)


def main_pids(sb, *units: str) -> dict[str, str]:
    return {u: show(sb, u, "MainPID")["MainPID"] for u in units}


@pytest.fixture
def broad(sandbox):
    cfg = sandbox.etc_vx11 / "vx11.yml"
    original = cfg.read_text()
    units: list[str] = []
    try:
        yield original, units
    finally:
        for u in units:
            sysctl(sandbox, "stop", u, check=False)
        sandbox.write_config(original)
        sysctl(sandbox, "stop", UNIT, check=False)
        sysctl(sandbox, "reset-failed", UNIT, check=False)
        sandbox.exec(["rm", "-f", "/var/lib/vx11/reaper-breaker.json"], timeout=10)


def start_python(sb, units: list[str], unit: str, code: str, count: int = 1) -> None:
    script = "\n".join(["import subprocess, sys, time",
                        f"ps = [subprocess.Popen([sys.executable, '-c', {code!r}]) "
                        f"for _ in range({count})]",
                        "time.sleep(600)"])
    r = sb.exec(["systemd-run", "--unit", unit, "--property=CollectMode=inactive-or-failed",
                 "/usr/bin/python3", "-c", script], timeout=30)
    assert r.returncode == 0, r.stderr
    units.append(f"{unit}.service")


def test_match_everything_rule_stops_enforcement_and_the_host_survives(sandbox, broad):
    original, units = broad
    sysctl(sandbox, "start", "dbus.service", "systemd-logind.service")
    start_python(sandbox, units, "vx11t-bait", BAIT, count=30)
    poll_for(lambda: count(sandbox, "bait") == 30, 30, what="30 bait processes")
    # Before enabling it: the dry run of the rule says what it would hit and that the
    # breaker would stop it; the host's plumbing is not among the findings.
    r = sandbox.exec([CTL, "reaper", "scan", "--json", "--rule", CATCHALL], timeout=60,
                     env={"PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    dry = json.loads(r.stdout)
    comms = {f["comm"] for f in dry["findings"]}
    assert "bait" in comms and not comms & {"dbus-daemon", "systemd-logind", "agetty",
                                             "systemd", "systemd-journal"}, comms
    assert dry["breaker"]["would_trip"].startswith("rule catchall would signal")

    before = main_pids(sandbox, "dbus.service", "systemd-logind.service")
    sandbox.write_config(reaper_config(original, CATCHALL))
    sysctl(sandbox, "restart", UNIT)
    status = poll_for(lambda: (s := show(sandbox, UNIT, "StatusText")["StatusText"])
                      .startswith("ENFORCEMENT STOPPED") and s, 30,
                      what="STATUS saying enforcement stopped")
    assert "rule catchall would signal" in status and "vx11ctl reaper rearm" in status
    poll_for(lambda: metric(sandbox, "vx11_reaper_enforcement_stopped") == 1.0, 15,
             what="vx11_reaper_enforcement_stopped 1")
    scans = metric(sandbox, "vx11_reaper_last_scan_timestamp_seconds")
    poll_for(lambda: (metric(sandbox, "vx11_reaper_last_scan_timestamp_seconds") or 0)
             >= (scans or 0) + 2, 30, what="two more scans")
    assert main_pids(sandbox, "dbus.service", "systemd-logind.service") == before
    for u in ("dbus.service", "systemd-logind.service", UNIT):
        assert show(sandbox, u, "ActiveState")["ActiveState"] == "active", u
    assert count(sandbox, "bait") == 30
    assert not journal(sandbox, "VX11_RULE=catchall", "VX11_OUTCOME=sigterm_sent")
    stopped = journal(sandbox, "VX11_EVENT=reaper_enforcement_stopped")
    assert stopped and stopped[-1]["VX11_RULE"] == "catchall"
    # A restart keeps it stopped (remembered in reaper.breaker_file) ...
    sysctl(sandbox, "restart", UNIT)
    poll_for(lambda: show(sandbox, UNIT, "StatusText")["StatusText"]
             .startswith("ENFORCEMENT STOPPED"), 30, what="still stopped after a restart")
    # ... until the operator fixes the rule and re-arms it.
    start_python(sandbox, units, "vx11t-onebait", ONE)
    sandbox.write_config(reaper_config(
        original, "{name: one, comm: '^onebait$', action: terminate, grace: 1}"))
    r = sandbox.exec([CTL, "reaper", "rearm"], timeout=60, env={"PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and "re-armed" in r.stdout, r.stdout + r.stderr
    poll_for(lambda: not show(sandbox, UNIT, "StatusText")["StatusText"]
             .startswith("ENFORCEMENT STOPPED"), 30, what="enforcement resumed")
    poll_for(lambda: journal(sandbox, "VX11_RULE=one", "VX11_OUTCOME=sigterm_sent"), 30,
             what="the fixed rule terminating its one target")
    assert metric(sandbox, "vx11_reaper_enforcement_stopped") == 0.0
    assert count(sandbox, "bait") == 30
