"""What systemd does with a daemon on vx11d.runtime: READY, STATUS, watchdog, journal fields."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.support import poll_for

from .conftest import REPO, journal, show, sysctl

pytestmark = pytest.mark.system


def test_active_only_after_ready(sandbox, test_unit):
    unit = test_unit("vx11-heartbeat.service")
    sysctl(sandbox, "start", "--no-block", unit)
    seen = poll_for(lambda: show(sandbox, unit, "ActiveState")["ActiveState"] != "inactive"
                    and show(sandbox, unit, "ActiveState")["ActiveState"], timeout=10,
                    what="unit leaving inactive")
    assert seen == "activating", "the unit was active before the daemon sent READY"
    poll_for(lambda: show(sandbox, unit, "ActiveState")["ActiveState"] == "active",
             timeout=15, what="active")
    entered = int(show(sandbox, unit, "ActiveEnterTimestampMonotonic")
                  ["ActiveEnterTimestampMonotonic"])
    started = [e for e in journal(sandbox, "VX11_EVENT=heartbeat_started")]
    assert started, "no heartbeat_started journal entry"
    assert int(started[-1]["VX11_READY_USEC"]) <= entered


def test_status_text_shows_in_systemctl(sandbox, test_unit):
    unit = test_unit("vx11-heartbeat.service")
    sysctl(sandbox, "start", unit)
    poll_for(lambda: show(sandbox, unit, "StatusText")["StatusText"] == "3+ ticks",
             timeout=10, what="StatusText '3+ ticks'")


def test_sigstop_is_caught_by_the_watchdog_and_restarted(sandbox, test_unit):
    unit = test_unit("vx11-heartbeat.service")
    sysctl(sandbox, "start", unit)
    props = show(sandbox, unit, "NRestarts", "MainPID", "WatchdogUSec")
    assert props["WatchdogUSec"] == "2s"
    n0, pid = int(props["NRestarts"]), props["MainPID"]
    t0 = time.monotonic()
    sysctl(sandbox, "kill", "--signal=SIGSTOP", unit)
    poll_for(lambda: int(show(sandbox, unit, "NRestarts")["NRestarts"]) > n0, timeout=20,
             interval=0.05, what="a watchdog restart")
    elapsed = time.monotonic() - t0
    assert elapsed >= 1.5, elapsed  # not before WatchdogSec=2s (load only makes it later)
    poll_for(lambda: show(sandbox, unit, "ActiveState", "MainPID")["MainPID"] not in ("0", pid)
             and show(sandbox, unit, "ActiveState")["ActiveState"] == "active", timeout=10,
             what="the restarted daemon active")
    msgs = [e.get("MESSAGE", "") for e in journal(sandbox, "-u", unit)]
    assert any("Watchdog timeout" in m for m in msgs), msgs[-10:]


def test_journal_carries_structured_fields(sandbox, test_unit):
    unit = test_unit("vx11-heartbeat.service")
    sysctl(sandbox, "start", unit)
    entries = poll_for(lambda: journal(sandbox, "VX11_COMPONENT=heartbeat",
                                       "VX11_EVENT=heartbeat_started"), timeout=10,
                       what="structured journal entry")
    e = entries[-1]
    assert e["SYSLOG_IDENTIFIER"] == "vx11-heartbeat"
    assert e["VX11_PID"].isdigit()
    assert e["MESSAGE"] == "heartbeat up"
    sysctl(sandbox, "stop", unit)
    poll_for(lambda: journal(sandbox, "VX11_EVENT=heartbeat_stopped"), timeout=10,
             what="the stop event (the daemon stopped gracefully on SIGTERM)")


def test_systemd_analyze_verify_passes_on_every_unit(sandbox):
    units = sorted(p.name for p in (REPO / "units").iterdir() if p.is_file())
    assert units, "no unit files"
    for name in units:
        r = sandbox.exec(["systemd-analyze", "verify", f"/etc/systemd/system/{name}"],
                         timeout=60)
        assert r.returncode == 0 and not r.stderr.strip(), f"{name}: {r.stderr}"


def test_sandbox_exec_passes_exit_status_and_output(sandbox):
    r = subprocess.run([sys.executable, "-m", "vx11d.ctl.main", "sandbox", "--name",
                        sandbox.name, "exec", "sh", "-c", "echo inside; exit 7"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 7 and r.stdout.strip() == "inside"
    st = subprocess.run([sys.executable, "-m", "vx11d.ctl.main", "sandbox", "--name",
                         sandbox.name, "status", "--json"], capture_output=True, text=True,
                        cwd=REPO)
    assert st.returncode == 0 and '"up": true' in st.stdout
    # PID 1 inside is systemd, and the host's PID 1 is not visible there.
    assert sandbox.exec(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
