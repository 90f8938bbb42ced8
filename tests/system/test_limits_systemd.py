"""Limits the sandbox's systemd really enforces: memory (and madre's ``oom`` record),
CPU quota, tasks; and the sandbox's own cgroup delegation (measured, cleaned up)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.infra.orphans import down_orphans, running_names
from tests.support import poll_for
from vx11d.ctl import cgroups
from vx11d.ctl.sandbox import Sandbox
from vx11d.errors import SandboxError

from .conftest import REPO, journal
from .test_madre_system import api, client, vx11  # noqa: F401  (the fixture)

pytestmark = pytest.mark.system

MB = 1024 * 1024


def spawn(sb, template: str, ttl: float, **args: str) -> dict:
    r = api(sb, "POST", "/vx11/spawn", {"template": template, "ttl_s": ttl, "args": args})
    assert r["status"] in (201, 202), r
    return r["body"]


def ended(sb, hid: str, timeout: float = 30) -> dict:
    def row():
        h = api(sb, "GET", f"/vx11/hijas/{hid}")["body"]
        return h if h["status"] not in ("requested", "starting", "running") else None
    return poll_for(row, timeout=timeout, what=f"hija {hid} ended")


def unit_log(sb, unit: str) -> str:
    return "\n".join(str(e.get("MESSAGE", "")) for e in journal(sb, f"_SYSTEMD_UNIT={unit}"))


def test_memory_over_the_limit_is_killed_and_recorded_oom_under_it_expires(vx11):  # noqa: F811
    sb = vx11
    hog = spawn(sb, "hog", 20, mb="200")
    small = spawn(sb, "hog", 3, mb="16")
    h = ended(sb, hog["id"])
    assert h["status"] == "oom", h
    assert (h["result"], h["exit_status"]) == ("signal", 9)  # all systemd says on cgroup v1
    assert h["memory_max"] == 32 * MB
    assert 24 * MB < h["memory_peak"] <= 32 * MB, h
    assert h["reason"].startswith("killed by the kernel: out of memory (peak "), h["reason"]
    s = ended(sb, small["id"])
    assert s["status"] == "expired" and s["memory_peak"] < 32 * MB, s
    snap = client(sb, "snapshot")
    assert [e["event"] for e in snap["events"] if e["subject"] == hog["id"]][-1] \
        == "hija_oom_killed"
    j = journal(sb, "VX11_EVENT=hija_oom_killed", f"VX11_HIJA_ID={hog['id']}")
    assert j and j[0]["VX11_TEMPLATE"] == "hog" and int(j[0]["VX11_MEMORY_PEAK"]) > 24 * MB
    m = sb.exec(["curl", "-sf", "http://127.0.0.1:9712/metrics"], timeout=30).stdout
    assert 'vx11_hijas_ended_total{reason="oom",template="hog"} 1.0' in m, \
        [ln for ln in m.splitlines() if "ended_total" in ln]
    r = sb.exec(["/opt/vx11d/bin/vx11ctl", "hijas", "list", "--status", "oom"], timeout=30)
    line = [ln for ln in r.stdout.splitlines() if ln.startswith(hog["id"])]
    assert line and "oom" in line[0] and "killed for memory: peak" in line[0] \
        and "of 32M" in line[0], r.stdout


def test_cpu_quota_20_percent_gives_a_busy_loop_at_most_0_3_of_its_wall_time(vx11):  # noqa: F811
    sb = vx11
    h = ended(sb, spawn(sb, "busy", 20, seconds="2")["id"])
    assert h["status"] == "exited", h
    out = [ln for ln in unit_log(sb, h["unit"]).splitlines() if ln.startswith("busy: ")]
    assert out, unit_log(sb, h["unit"])
    cpu, wall = float(out[0].split()[1].rstrip("s")), float(out[0].split()[4].rstrip("s"))
    assert wall >= 2.0 and cpu <= 0.3 * wall, out[0]


def test_tasks_max_4_makes_the_fifth_task_fail_to_fork_in_the_hija_journal(vx11):  # noqa: F811
    sb = vx11
    h = spawn(sb, "forker", 5)
    def fifth() -> str | None:
        text = unit_log(sb, h["unit"])
        return text if "task 5" in text else None

    log = poll_for(fifth, timeout=20, what="the fifth fork's outcome in the journal")
    assert "task 4: started" in log and "task 5: fork failed: [Errno 11]" in log, log


def test_the_session_sandbox_reports_measured_limits(sandbox):
    vx11ctl = str(Path(sys.executable).parent / "vx11ctl")
    r = subprocess.run([vx11ctl, "sandbox", "--name", sandbox.name, "status"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert "limits enforced: memory, pids, cpu" in r.stdout and "NOT" not in r.stdout, r.stdout
    info = sandbox.describe()
    assert info["limits_enforced"] == {"memory": True, "pids": True, "cpu": True}
    assert len(info["cgroups"]) == len(cgroups.JOINED)


def test_a_sandbox_without_delegated_controllers_refuses_to_come_up():
    sb = Sandbox(f"vx11t-{os.getpid()}-nolimits", limits=False)
    try:
        with pytest.raises(SandboxError, match="does not enforce memory, pids, cpu limits"):
            sb.up()
        assert sb.nspawn_pid() is None and not sb.state.exists()
    finally:
        sb.down()


KILLED_SESSION = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, sys.argv[1])
    from vx11d.ctl.sandbox import Sandbox
    sb = Sandbox(f"vx11t-{os.getpid()}", die_with_caller=True)
    sb.up()
    d = sb.describe()
    print(sb.name, d["system_state"], all(d["limits_enforced"].values()), flush=True)
    time.sleep(600)
""")


def test_a_second_sandbox_runs_beside_the_first_and_a_killed_session_leaves_nothing(sandbox):
    """A second session's sandbox boots while this one runs, says ``running`` with its
    limits enforced; killed by SIGKILL mid-run, the next sweep leaves no container and no
    cgroup of it."""
    p = subprocess.Popen([sys.executable, "-c", KILLED_SESSION, str(REPO)], text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    name = f"vx11t-{p.pid}"
    try:
        assert p.stdout is not None
        line = p.stdout.readline().split()
        assert line == [name, "running", "True"], (line, p.stderr and p.stderr.read()[-2000:])
        assert name in running_names("vx11t-") and cgroups.find(name)
        assert sandbox.is_up()
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    poll_for(lambda: name not in running_names("vx11t-"), timeout=60,
             what="the killed session's container powered off")
    assert name in down_orphans("vx11t-")
    assert cgroups.find(name) == [] and name not in running_names("vx11t-")
    assert sandbox.is_up() and cgroups.find(sandbox.name)
