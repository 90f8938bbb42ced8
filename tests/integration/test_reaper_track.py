"""The event-driven tracker on real processes: exits as pidfd events, orphaning by a
parent's exit, PID reuse, the open-file limit, and agreement with a full scan."""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.request import urlopen

from tests.support import poll_for
from vx11d.reaper.proc import read_proc, read_uptime_ticks, scan
from vx11d.reaper.track import Tracker

REPO = Path(__file__).resolve().parents[2]
PR_SET_CHILD_SUBREAPER = 36


def py(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdout=subprocess.PIPE, text=True)


def end(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.kill()
    p.wait(10)


def pump(t: Tracker, cond, timeout: float = 10.0, what: str = "condition"):
    """Let the tracker handle events (as the daemon's loop would) until ``cond()``."""
    def step():
        t.handle_events()
        t.check_new()
        return cond()
    return poll_for(step, timeout, 0.01, what)


def test_a_new_process_is_found_by_its_pid_and_its_exit_is_an_event():
    t = Tracker()
    try:
        t.check_new()  # the first look lists /proc
        p = subprocess.Popen(["sleep", "60"])
        try:
            pump(t, lambda: t.watching(p.pid), what="the new process probed")
            assert p.pid not in t.procs, "a probe opens a pidfd, it reads nothing"
            t.refresh()
            assert t.procs[p.pid].state != "Z"
            assert t.tracked_fds > 0
            before = t.events
            p.kill()  # not waited for: it stays a zombie, our child
            pump(t, lambda: p.pid in t.zombies, what="the exit seen as a zombie")
            assert t.events > before, "the zombie must come from an exit event"
            assert p.pid in t.snapshot().zombies_by_parent[os.getpid()]
            p.wait()
            t.refresh()
            assert p.pid not in t.procs, "a reaped zombie leaves the table"
        finally:
            end(p)
    finally:
        t.close()


def test_a_process_reaped_before_the_refresh_is_never_read():
    """Probed, exited and reaped between two refreshes (most of a host's churn): the
    probe and the exit event cost no /proc read, and the process never enters the
    table."""
    t = Tracker()
    try:
        t.refresh()
        read: list[int] = []
        real_read = t._read
        t._read = lambda pid: (read.append(pid), real_read(pid))[1]  # type: ignore[method-assign]
        p = subprocess.Popen(["sleep", "0.3"])
        pump(t, lambda: t.watching(p.pid), what="the new process probed")
        events = t.events
        p.wait()  # reaped by us, its parent
        pump(t, lambda: t.events > events and not t.watching(p.pid), what="the exit event")
        assert p.pid not in read
        assert not t.watching(p.pid) and p.pid not in t.procs
        t.refresh()
        assert p.pid not in t.procs
    finally:
        t.close()


def test_a_zombie_made_between_two_looks_is_known_within_one_check():
    """Born and dead before the tracker looked: the PID probe still finds the zombie."""
    t = Tracker()
    try:
        t.check_new()
        p = subprocess.Popen(["true"])
        poll_for(lambda: (q := read_proc("/proc", p.pid)) is not None and q.state == "Z",
                 10, what="true to exit")
        t0 = time.monotonic()
        pump(t, lambda: p.pid in t.zombies, what="the zombie")
        assert time.monotonic() - t0 < 5
        p.wait()
    finally:
        t.close()


def test_children_are_orphaned_when_their_parent_exits():
    """The parent's exit event makes the tracker read its children again: new ppid."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    parent = py("""
        import subprocess, time
        k = subprocess.Popen(["sleep", "60"])
        print(k.pid, flush=True)
        time.sleep(60)
    """)
    t = Tracker()
    kid = 0
    try:
        kid = int(parent.stdout.readline())
        t.refresh()
        pump(t, lambda: kid in t.procs and t.procs[kid].ppid == parent.pid,
             what="the child under its parent")
        listings = t.listings
        parent.kill()
        parent.wait()
        pump(t, lambda: t.procs.get(kid) is not None and t.procs[kid].ppid == os.getpid(),
             what="the child re-parented to this subreaper")
        assert t.listings == listings, "orphaning must come from the event, not a listing"
    finally:
        if kid:
            try:
                os.kill(kid, signal.SIGKILL)
                os.waitpid(kid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        end(parent)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        t.close()


REUSE = r"""
import json, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from vx11d.reaper.track import Tracker

def child(comm):
    pid = os.fork()
    if pid == 0:
        open("/proc/self/comm", "w").write(comm)
        while True:
            signal.pause()
    return pid

t = Tracker()
t.refresh()
results = []
for i in range(int(sys.argv[2])):
    a = child("old-%d" % i)
    while t.procs.get(a) is None or t.procs[a].comm != "old-%d" % i:
        t.handle_events(); t.check_new(); t.refresh(); time.sleep(0.005)
    start_a = t.procs[a].start
    os.kill(a, signal.SIGKILL)
    os.waitpid(a, 0)
    # make sure the start tick differs, then force the same PID onto a newcomer
    time.sleep(0.02)
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(a - 1))
    b = child("new-%d" % i)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        t.handle_events(); t.check_new(); t.refresh()
        p = t.procs.get(b)
        if p is not None and p.comm == "new-%d" % i:
            break
        time.sleep(0.005)
    p = t.procs.get(b)
    results.append({"reused": a == b, "seen_new": p is not None and p.comm == "new-%d" % i,
                    "start_changed": p is not None and p.start != start_a})
    os.kill(b, signal.SIGKILL)
    os.waitpid(b, 0)
print(json.dumps(results))
"""


def test_a_reused_pid_is_a_new_process_with_a_new_start_time(tmp_path):
    """In a PID namespace of its own, PIDs are forced onto newcomers (ns_last_pid)."""
    script = tmp_path / "reuse.py"
    script.write_text(REUSE)
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable,
                        str(script), str(REPO), "10"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout.strip().splitlines()[-1])
    assert sum(x["reused"] for x in results) >= 5, results
    for x in results:
        assert x["seen_new"], results
        if x["reused"]:
            assert x["start_changed"], results


def test_above_the_fd_budget_the_tracker_says_overflow():
    kids = [subprocess.Popen(["sleep", "60"]) for _ in range(20)]
    t = Tracker(max_tracked=5)
    try:
        t.refresh()
        assert t.overflow
        assert t.tracked_fds <= 5
    finally:
        for k in kids:
            end(k)
        t.close()


DAEMON_CFG = """\
db: {{path: {db}}}
reaper:
  metrics_port: {port}
  hija_enforce: false
  interval: 1s
"""


def metric(port: int, name: str) -> float | None:
    try:
        with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_reaper(tmp_path: Path, nofile: int | None) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cfg = tmp_path / "vx11.yml"
    cfg.write_text(DAEMON_CFG.format(db=tmp_path / "vx11.db", port=port))
    env = {**os.environ, "VX11_CONFIG": str(cfg), "PYTHONPATH": str(REPO)}

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    d = subprocess.Popen([sys.executable, "-m", "vx11d", "reaper"], env=env,
                         preexec_fn=limit, stderr=subprocess.DEVNULL)
    poll_for(lambda: metric(port, "vx11_reaper_last_scan_timestamp_seconds") or
             d.poll() is not None, 30, what="the first scan")
    assert d.poll() is None, "vx11d reaper exited"
    return d, port


def leaky_parent(n: int) -> subprocess.Popen:
    return py(f"""
        import os, time
        for _ in range({n}):
            if os.fork() == 0:
                os._exit(0)
        print("ready", flush=True)
        time.sleep(120)
    """)


def test_the_daemon_learns_a_zombie_from_the_exit_event_between_scans(tmp_path):
    d, port = run_reaper(tmp_path, None)
    p = None
    try:
        assert metric(port, "vx11_reaper_event_tracking") == 1
        base = metric(port, "vx11_reaper_zombie_processes") or 0
        p = leaky_parent(3)
        assert p.stdout.readline().strip() == "ready"
        poll_for(lambda: (metric(port, "vx11_reaper_zombie_processes") or 0) >= base + 3,
                 10, what="three zombies known")
    finally:
        if p is not None:
            end(p)
        d.terminate()
        d.wait(10)


def test_at_the_open_file_limit_the_daemon_polls_and_still_sees_zombies(tmp_path):
    """RLIMIT_NOFILE leaves fewer pidfds than processes: full scans, nothing missed."""
    n_procs = len(scan().procs)
    d, port = run_reaper(tmp_path, 256 + max(10, n_procs // 4))
    p = None
    try:
        poll_for(lambda: metric(port, "vx11_reaper_event_tracking") == 0, 20,
                 what="tracking off at the limit")
        p = leaky_parent(3)
        assert p.stdout.readline().strip() == "ready"
        poll_for(lambda: (metric(port, "vx11_reaper_zombie_processes") or 0) >= 3, 20,
                 what="zombies found by full scans")
    finally:
        if p is not None:
            end(p)
        d.terminate()
        d.wait(10)


CHURN = r"""
import os, subprocess, sys, time
# zombies that stay, orphans (re-parented to the subreaper: our caller), and churn
for _ in range(3):
    if os.fork() == 0:
        os._exit(0)
if os.fork() == 0:
    subprocess.Popen(["sleep", "60"]); subprocess.Popen(["sleep", "60"])
    os._exit(0)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[1])
kids = []
while time.monotonic() < end:
    kids.append(subprocess.Popen(["sleep", "0.05"]))
    kids = [k for k in kids if k.poll() is None]
    time.sleep(0.01)
for k in kids:
    k.wait()
print("quiet", flush=True)
time.sleep(60)
"""


def comparable(snap) -> dict[int, tuple]:
    return {p.pid: (p.ppid, p.state == "Z", p.comm, p.uid, p.start)
            for p in snap.procs.values()}


def test_the_tracked_table_equals_a_full_scan_after_churn():
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    t = Tracker()
    t.refresh()
    p = py(CHURN, "2")
    try:
        assert p.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 30
        quiet = False
        poller = select.poll()  # not select(): this process may hold fds above 1024
        poller.register(p.stdout, select.POLLIN)
        while time.monotonic() < deadline and not quiet:
            t.handle_events()
            t.check_new()
            quiet = bool(poller.poll(50))
        assert quiet, "the churn did not end"
        assert p.stdout.readline().strip() == "quiet"

        def same() -> bool:
            before = read_uptime_ticks()
            t.refresh()
            full = scan()
            a, b = comparable(t.snapshot()), comparable(full)
            # others' processes come and go on a shared machine: what started after the
            # refresh began is excused; everything else must agree, field by field
            missing = [pid for pid in b.keys() - a.keys() if b[pid][4] < before]
            mismatch = [pid for pid in a.keys() & b.keys() if a[pid] != b[pid]]
            return not missing and not mismatch
        poll_for(same, 10, 0.1, "the tracked table to equal a full scan")
        mine = t.snapshot()
        assert len(mine.zombies_by_parent.get(p.pid, ())) == 4  # 3 + the orphan maker
        orphans = [q for q in mine.procs.values() if q.ppid == os.getpid()
                   and q.comm == "sleep"]
        assert len(orphans) >= 2
    finally:
        end(p)
        for q in list(scan().procs.values()):
            if q.ppid == os.getpid() and q.comm == "sleep":
                try:
                    os.kill(q.pid, signal.SIGKILL)
                    os.waitpid(q.pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        t.close()
