"""The reaper against real processes: zombies, orphans, stubborn processes, hijas, PID reuse.

Every rule here names only this test's own processes (a random comm), and the host's
processes all sit in the root cgroup, so protected_units leaves "-.slice" out. The
built-in hija rule is switched off except in the hija test (which uses its own /proc
view): other sandboxes' hijas run on this host too.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from prometheus_client import CollectorRegistry

from tests.support import poll_for
from vx11d.config import parse
from vx11d.db import Database
from vx11d.reaper.daemon import ReaperService
from vx11d.reaper.metrics import ReaperMetrics
from vx11d.reaper.proc import scan

REPO = Path(__file__).resolve().parents[2]


def tag() -> str:
    return "rpt" + secrets.token_hex(5)  # 13 chars: fits in comm (15)


def service(yaml_text: str, dbpath: str | None = None, proc_path: str = "/proc"
            ) -> ReaperService:
    db = Database(dbpath) if dbpath else None
    text = textwrap.dedent(yaml_text)
    if proc_path == "/proc":
        text = text.replace("reaper:\n", "reaper:\n  hija_enforce: false\n", 1)
    return ReaperService(parse(text, "test.yml"), db,
                         ReaperMetrics(CollectorRegistry()), proc_path=proc_path)


def drive(svc: ReaperService, until, timeout: float) -> float:
    """Run the service's ticks as vx11d.runtime would, until ``until()``; returns seconds."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        svc.tick()
        if until():
            return time.monotonic() - t0
        time.sleep(min(svc.interval, 0.05))
    raise AssertionError(f"not done within {timeout}s; status {svc.status()!r}")


def start_py(code: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)],
                            stdout=subprocess.PIPE, text=True, **kw)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (FileNotFoundError, ProcessLookupError):
        return False


def kill_quietly(pid: int) -> None:
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return
    try:
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


def rows(dbpath: str, sql: str = "SELECT rule, action, signal, outcome FROM reaper_actions "
         "ORDER BY id") -> list[tuple]:
    return [tuple(r) for r in Database(dbpath, readonly=True).query(sql)]


LEAKY = """
    import os, time, sys
    open('/proc/self/comm', 'w').write(sys.argv[1])
    for _ in range(2):
        if os.fork() == 0:
            os._exit(0)
    print('ready', flush=True)
    time.sleep(120)
"""


def start_leaky(name: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(LEAKY), name],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    time.sleep(0.05)  # older than the 2 clock ticks the kill path's proof needs
    return p


def test_zombies_of_a_parent_that_never_waits_are_attributed_to_it(dbpath):
    name = tag()
    leaky = start_leaky(name)
    try:
        svc = service(f"""
            reaper:
              protected_units: []
              rules: [{{name: leaky, comm: "^{name}$", zombie_parent: true}}]
        """, dbpath)
        poll_for(lambda: len(scan().zombies_by_parent.get(leaky.pid, ())) == 2, 5,
                 what="two zombies")
        svc.tick()
        z = svc.report.snapshot.zombies_by_parent[leaky.pid]
        assert len(z) == 2
        if len(svc.report.snapshot.zombies_by_parent) == 1:
            assert svc.status() == f"2 zombies under pid {leaky.pid} ({name}), 0 actions"
        assert svc.report.zombies_by_rule["leaky"] == 2
        assert rows(dbpath) == [("leaky", "observe", None, "observed")]
        assert leaky.poll() is None, "observe mode must not signal"
    finally:
        stop(leaky)


def test_a_leaking_parent_is_nudged_then_terminated_where_a_rule_allows(dbpath):
    name = tag()
    leaky = start_leaky(name)
    try:
        svc = service(f"""
            reaper:
              interval: 0.3
              protected_units: []
              rules: [{{name: leaky, comm: "^{name}$", zombie_parent: true, min_zombies: 2,
                        action: terminate, grace: 1}}]
        """, dbpath)
        poll_for(lambda: len(scan().zombies_by_parent.get(leaky.pid, ())) == 2, 5,
                 what="two zombies")
        drive(svc, lambda: leaky.poll() is not None, 10)
        assert leaky.returncode == -signal.SIGTERM
        drive(svc, lambda: not svc.term.pending, 5)
        got = rows(dbpath)
        assert got[0] == ("leaky", "nudge", "SIGCHLD", "sigchld_sent")
        assert got[1] == ("leaky", "nudge", "SIGTERM", "sigterm_sent")
        assert got[-1][-1] == "exited_after_sigterm"
        events = rows(dbpath, "SELECT event FROM events ORDER BY id")
        assert [e[0] for e in events][:2] == ["zombie_parent_nudged", "zombie_parent_terminated"]
    finally:
        stop(leaky)


ORPHAN = """
    import os, sys, time
    if os.fork() == 0:
        if os.fork() == 0:
            open('/proc/self/comm', 'w').write(sys.argv[1])
            if sys.argv[2] == 'stubborn':
                import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print(os.getpid(), flush=True)
            time.sleep(120)
            os._exit(0)
        os._exit(0)
    os.wait()
"""


def start_orphan(name: str, mode: str = "plain") -> int:
    """A double-forked process (re-parented to PID 1 or a subreaper); returns its pid."""
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(ORPHAN), name, mode],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    pid = int(p.stdout.readline())
    p.wait(10)
    poll_for(lambda: next((q.ppid for q in [scan().procs.get(pid)] if q), 0) != p.pid, 5,
             what="re-parenting")
    time.sleep(0.05)
    return pid


def test_a_double_forked_orphan_is_observed_in_observe_mode(dbpath):
    name = tag()
    pid = start_orphan(name)
    try:
        svc = service(f"""
            reaper:
              interval: 0.2
              protected_units: []
              rules: [{{name: orphan, comm: "^{name}$", orphan: true}}]
        """, dbpath)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 1.0:
            svc.tick()
            time.sleep(svc.interval)
        assert alive(pid)
        assert svc.signals_sent == 0
        assert rows(dbpath) == [("orphan", "observe", None, "observed")]  # rate-limited
        ev = rows(dbpath, "SELECT event, data FROM events")
        assert ev[0][0] == "orphan_observed"
        assert json.loads(ev[0][1])["pid"] == pid
    finally:
        kill_quietly(pid)


def test_a_double_forked_orphan_is_terminated_within_interval_plus_grace(dbpath):
    name = tag()
    pid = start_orphan(name)
    try:
        svc = service(f"""
            reaper:
              interval: 1
              protected_units: []
              rules: [{{name: orphan, comm: "^{name}$", orphan: true, action: terminate,
                        grace: 2}}]
        """, dbpath)
        # within interval + grace (drive's deadline, with room for a loaded machine); the
        # timing itself is bench/reaper_scan.py's, not a single-shot assert here
        drive(svc, lambda: not alive(pid), 1 + 2 + 5)
        drive(svc, lambda: not svc.term.pending, 3)
        assert rows(dbpath) == [("orphan", "terminate", "SIGTERM", "sigterm_sent"),
                                ("orphan", "terminate", None, "exited_after_sigterm")]
        assert rows(dbpath, "SELECT event FROM events")[0] == ("orphan_terminated",)
    finally:
        kill_quietly(pid)


def test_a_process_ignoring_sigterm_is_sigkilled_after_the_grace(dbpath):
    name = tag()
    pid = start_orphan(name, "stubborn")
    try:
        svc = service(f"""
            reaper:
              interval: 0.2
              protected_units: []
              rules: [{{name: stubborn, comm: "^{name}$", action: terminate, grace: 1}}]
        """, dbpath)
        took = drive(svc, lambda: not alive(pid), 10)
        assert took >= 1.0  # SIGKILL only after the grace (a lower bound: load only adds)
        drive(svc, lambda: not svc.term.pending, 3)
        assert rows(dbpath) == [
            ("stubborn", "terminate", "SIGTERM", "sigterm_sent"),
            ("stubborn", "terminate", "SIGKILL", "sigkill_sent"),
            ("stubborn", "terminate", None, "exited_after_sigkill")]
    finally:
        kill_quietly(pid)


def test_protected_processes_are_never_signalled(dbpath, monkeypatch):
    """PID 1, kernel threads, the reaper itself and an unmatched process, each named by a
    terminate rule (but the unmatched one): none of them gets a signal."""
    sent: list[int] = []

    def record(fd: int, sig: int, *a) -> None:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            pid = next(int(ln.split()[1]) for ln in f if ln.startswith("Pid:"))
        sent.append(pid)

    monkeypatch.setattr(signal, "pidfd_send_signal", record)
    init_comm = Path("/proc/1/comm").read_text().strip()
    own_comm = Path("/proc/self/comm").read_text().strip()
    name, other = tag(), tag()
    pid = start_orphan(name)
    bystander = start_orphan(other)
    try:
        svc = service(f"""
            reaper:
              protected_units: []
              max_kills_per_scan: 100000
              rules:
                - {{name: init, comm: "^{init_comm}$", action: terminate}}
                - {{name: kthreads, comm: "^(kthreadd|kworker|ksoftirqd|rcu_)", action: terminate}}
                - {{name: me, comm: "^{own_comm}$", action: terminate}}
                - {{name: target, comm: "^{name}$", action: terminate}}
        """, dbpath)
        svc.tick()
        kthreads = [p.pid for p in svc.report.snapshot.procs.values()
                    if svc.report.snapshot.is_kthread(p)]
        assert kthreads, "no kernel thread visible"
        assert pid in sent, "the control target should have been signalled"
        for never in (1, os.getpid(), *kthreads, bystander):
            assert never not in sent
        assert alive(bystander)
    finally:
        svc.term.close()
        kill_quietly(pid)
        kill_quietly(bystander)


def test_a_hija_whose_row_ended_is_terminated(dbpath, tmp_path):
    """Real processes; the cgroup a systemd-run unit would give them comes from a /proc
    view whose stat and uptime are the live files (the system test uses real units)."""
    db = Database(dbpath)
    now = time.time()
    for hid, status in (("ended01", "expired"), ("live01", "running")):
        db.write(lambda c, hid=hid, status=status: c.execute(
            "INSERT INTO spawner_hijas (id, template, ttl_s, unit, status, created_at) "
            "VALUES (?, 'demo', 60, ?, ?, ?)", (hid, f"vx11-hija-{hid}.service", status, now)))
    view = tmp_path / "proc"
    view.mkdir()
    (view / "uptime").symlink_to("/proc/uptime")
    procs = {}
    try:
        for hid in ("ended01", "live01", "norow01"):
            p = start_py("import time; print('ok', flush=True); time.sleep(120)")
            assert p.stdout is not None and p.stdout.readline()
            procs[hid] = p
            d = view / str(p.pid)
            d.mkdir()
            (d / "stat").symlink_to(f"/proc/{p.pid}/stat")
            (d / "cgroup").write_text(
                f"0::/vx11.slice/vx11-hijas.slice/vx11-hija-{hid}.service\n")
        time.sleep(0.05)
        svc = service("""
            reaper:
              interval: 0.5
              hija_grace: 1
        """, dbpath, proc_path=str(view))
        drive(svc, lambda: procs["ended01"].poll() is not None
              and procs["norow01"].poll() is not None, 5)
        assert procs["live01"].poll() is None
        drive(svc, lambda: not svc.term.pending, 3)
        got = rows(dbpath, "SELECT rule, signal, outcome, hija_id, detail FROM reaper_actions "
                           "WHERE signal = 'SIGTERM' ORDER BY hija_id")
        assert [(r[0], r[1], r[2], r[3]) for r in got] == [
            ("hija", "SIGTERM", "sigterm_sent", None), ("hija", "SIGTERM", "sigterm_sent",
                                                        "ended01")]
        assert json.loads(got[0][4])["hija"] == "norow01"
        ev = rows(dbpath, "SELECT event, subject FROM events WHERE component='reaper' "
                          "AND event='hija_terminated' ORDER BY subject")
        assert ("hija_terminated", "hija:ended01") in ev
    finally:
        for p in procs.values():
            stop(p)


def test_a_comm_with_parens_spaces_and_newline_in_a_real_process():
    nasty = "a) (b\nc) Z 1"
    p = start_py(f"""
        import time
        open('/proc/self/comm', 'w').write({nasty!r})
        print('ok', flush=True)
        time.sleep(60)
    """)
    try:
        assert p.stdout is not None and p.stdout.readline()
        # Right after its print the child may still be running on its way to sleep().
        q = poll_for(lambda: (x := scan().procs[p.pid]).state == "S" and x, timeout=5,
                     what="the child asleep")
        assert (q.comm, q.ppid, q.state) == (nasty, os.getpid(), "S")
    finally:
        stop(p)


def test_a_reused_pid_is_never_signalled(tmp_path):
    assert os.geteuid() == 0, "the suite runs as root (a PID namespace of its own)"
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m",
                        "tests.integration.reaper_reuse", "25", str(tmp_path / "r.db")],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["reused"] == 25, res  # the PID really was taken over every time
    assert res["wrong_process_signals"] == 0, res
    assert res["outcomes"] == {"recorded_pid_reused": 25}, res


def test_pidfd_poll_sees_exit_of_a_non_child():
    from vx11d.reaper.kill import has_exited

    name = tag()
    pid = start_orphan(name)
    fd = os.pidfd_open(pid)
    try:
        assert not has_exited(fd)
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        assert select.select([fd], [], [], 5)[0]
        assert has_exited(fd)
    finally:
        os.close(fd)
