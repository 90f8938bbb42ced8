"""A rule's ``user`` against real processes whose /proc owner is not their uid (issue 14):
a non-dumpable process running as nobody, and a root child that setuid()s to nobody.
Both make /proc/PID owned by root; the rule must see nobody."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.integration.test_reaper_processes import kill_quietly, rows, service, tag
from tests.support import poll_for
from vx11d.reaper.proc import scan

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change uids")

NOBODY = 65534

# Names itself, drops to nobody if asked (a root child's setuid), makes itself
# non-dumpable if asked, says ready, then on each line from stdin setuid()s to the uid
# it names (root -> nobody while the reaper is between its scan and its signal).
CHILD = textwrap.dedent("""
    import ctypes, os, sys, time
    comm, setuid_to, dumpable = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    open('/proc/self/comm', 'w').write(comm)
    if setuid_to >= 0:
        os.setgid(setuid_to)
        os.setuid(setuid_to)
    if not dumpable:
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE 0
    print('ready', flush=True)
    for line in sys.stdin:
        os.setgid(int(line))
        os.setuid(int(line))
        print('changed', flush=True)
    time.sleep(120)
""")


def start(comm: str, *, setuid_to: int = -1, dumpable: bool = True,
          as_nobody: bool = False) -> subprocess.Popen:
    argv = [sys.executable, "-c", CHILD, comm, str(setuid_to), "1" if dumpable else "0"]
    if as_nobody:
        argv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    poll_for(lambda: _ticks_old(p.pid), 5, what="the child older than two ticks")
    return p


def _ticks_old(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as f:
        start = int(f.read().rsplit(b")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        now = float(f.read().split()[0]) * os.sysconf("SC_CLK_TCK")
    return now - start >= 3


def owner(pid: int) -> int:
    return os.stat(f"/proc/{pid}/stat").st_uid


def end(p: subprocess.Popen) -> None:
    kill_quietly(p.pid)
    p.wait(10)


def test_user_rule_reads_the_uid_of_nondumpable_and_setuid_changed_processes(dbpath):
    name = tag()
    nondumpable = start(name, dumpable=False, as_nobody=True)
    dropped = start(name, setuid_to=NOBODY)  # root at exec, nobody now
    try:
        # the trap of today's main: both look like root's processes in /proc
        assert owner(nondumpable.pid) == 0 and owner(dropped.pid) == 0
        svc = service(f"""
            reaper:
              protected_units: []
              rules:
                - {{name: asroot, comm: "^{name}$", user: root, action: terminate, grace: 1}}
                - {{name: asnobody, comm: "^{name}$", user: nobody}}
        """, dbpath)
        rep = svc.scan_and_act()
        by_pid = {f.proc.pid: f for f in rep.findings}
        assert by_pid[nondumpable.pid].rule == "asnobody"
        assert by_pid[dropped.pid].rule == "asnobody"
        assert by_pid[dropped.pid].uid == NOBODY
        assert nondumpable.poll() is None and dropped.poll() is None
        assert ("asroot", "terminate", "SIGTERM", "sigterm_sent") not in rows(dbpath)
    finally:
        end(nondumpable)
        end(dropped)


def test_uid_is_checked_again_at_signal_time(dbpath):
    name = tag()
    p = start(name)  # root
    try:
        svc = service(f"""
            reaper:
              protected_units: []
              rules: [{{name: asroot, comm: "^{name}$", user: "0", action: terminate}}]
        """, dbpath)
        snap_rep = svc.evaluator.evaluate(scan("/proc"))
        assert [f.rule for f in snap_rep.findings if f.proc.pid == p.pid] == ["asroot"]
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(f"{NOBODY}\n")  # between the scan and the signal: now nobody's
        p.stdin.flush()
        assert p.stdout.readline().strip() == "changed"
        svc.act(snap_rep)
        svc._flush()
        assert p.poll() is None, "a process that is no longer root's was signalled"
        assert ("asroot", "terminate", None, "refused") in rows(dbpath)
    finally:
        end(p)


def test_a_user_rule_still_terminates_its_own_users_nondumpable_process(dbpath):
    name = tag()
    p = start(name, dumpable=False, as_nobody=True)
    try:
        svc = service(f"""
            reaper:
              protected_units: []
              rules: [{{name: nob, comm: "^{name}$", user: nobody, action: terminate,
                        grace: 1}}]
        """, dbpath)
        svc.tick()
        poll_for(lambda: p.poll() is not None, 10, what="the nobody process to exit")
        assert p.returncode == -signal.SIGTERM
        assert ("nob", "terminate", "SIGTERM", "sigterm_sent") in rows(dbpath)
    finally:
        if p.poll() is None:
            end(p)


def test_breaker_stops_enforcement_after_max_signals_in_the_window(dbpath, tmp_path):
    name = tag()
    procs = [start(name) for _ in range(4)]
    try:
        svc = service(f"""
            reaper:
              protected_units: []
              breaker_max_signals: 2
              breaker_min_matches: 1000
              breaker_file: {tmp_path / "breaker.json"}
              rules: [{{name: many, comm: "^{name}$", action: terminate, grace: 1}}]
        """, dbpath)
        svc.breaker.path = str(tmp_path / "breaker.json")  # what main() wires in
        svc.tick()
        poll_for(lambda: sum(p.poll() is not None for p in procs) == 2, 10,
                 what="two processes ended by SIGTERM")
        for _ in range(3):
            svc.tick()
        assert sum(p.poll() is None for p in procs) == 2  # the rest left alone
        assert svc.breaker.open and "breaker_max_signals 2" in svc.status()
        outcomes = [r[3] for r in rows(dbpath)]
        assert outcomes.count("sigterm_sent") == 2 and "enforcement_stopped" in outcomes
        assert (tmp_path / "breaker.json").exists()
    finally:
        for p in procs:
            if p.poll() is None:
                end(p)
