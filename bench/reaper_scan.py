"""Benchmark: the reaper's process-table scan beside ``ps``, its idle CPU, and PID reuse.

    .venv/bin/python bench/reaper_scan.py [--quick] [--processes N]

1. Starts N idle processes (default 10,000): forked children of one small parent, each
   blocked in pause(); the parent reaps them all when told to stop (always, in finally).
2. Times the reaper's full scan (pid, ppid, state, start time, comm, uid: the facts
   ``ps -eo pid,ppid,stat,etimes,uid,comm`` prints) beside that ps command, alternating,
   in the same run; medians. Also the scan plus rule evaluation with the default config.
3. Runs ``vx11d reaper`` at its default interval (30 s) with those processes present and
   measures its CPU use from its own /proc/PID/stat over one full interval: the
   event-driven tracker (the default), then the same with churn (50 process starts and
   exits per second, each child living 1 s), and in the full run the old polling design
   (``tracking: poll``) beside it. ``--quick`` uses a 15 s interval and window (the cost
   per second of a scan is then doubled: a conservative figure).
4. Measures zombie detection: a process exits unreaped; the time until the daemon's
   ``vx11_reaper_zombie_processes`` counts it (exit -> the reaper knows).
5. Checks that the tracker's table equals a full scan after churn with zombies and
   orphans (``scan_matches_full_scan``).
6. Runs the PID-reuse trial (tests/integration/reaper_reuse.py) many times in a PID
   namespace of its own: the reaper must never signal the process that took the PID.

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from urllib.request import urlopen

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _idlekids import start_idle, stop_idle  # noqa: E402

from vx11d.config import Config  # noqa: E402
from vx11d.reaper.daemon import build_evaluator  # noqa: E402
from vx11d.reaper.proc import read_uptime_ticks, scan  # noqa: E402
from vx11d.reaper.track import Tracker  # noqa: E402


def time_scan() -> tuple[float, int]:
    t0 = time.perf_counter()
    snap = scan("/proc")
    return (time.perf_counter() - t0) * 1000, len(snap.procs)


def time_ps() -> tuple[float, int]:
    t0 = time.perf_counter()
    out = subprocess.run(["ps", "-eo", "pid,ppid,stat,etimes,uid,comm"], capture_output=True,
                         check=True).stdout
    return (time.perf_counter() - t0) * 1000, out.count(b"\n") - 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far, in seconds, from the scheduler's own
    nanosecond count (``/proc/PID/task/TID/schedstat``): utime+stime in /proc/PID/stat
    come in 10 ms ticks, too coarse for 30 ms over a window."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended between the listing and the read
    return total / 1e9


def last_scan(port: int) -> float:
    try:
        with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("vx11_reaper_last_scan_timestamp_seconds "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


CHURN = r"""
import os, sys, time
rate, life = float(sys.argv[1]), float(sys.argv[2])
print("ready", flush=True)
nxt = time.monotonic()
while True:
    nxt += 1.0 / rate
    if os.fork() == 0:
        time.sleep(life)
        os._exit(0)
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass
    time.sleep(max(0.0, nxt - time.monotonic()))
"""


def metric(port: int, name: str) -> float | None:
    try:
        with urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


class Reaper:
    """``vx11d reaper`` in a subprocess with its own config, stopped on exit."""

    def __init__(self, tmp: str, tracking: str = "events", interval: float = 30.0):
        self.port = free_port()
        cfg = Path(tmp, f"vx11-{tracking}.yml")
        # hija_enforce off: other sandboxes' hijas may run on this host (their cgroups
        # sit under a container prefix, which the rule ignores anyway).
        cfg.write_text(f"db: {{path: {tmp}/vx11.db}}\n"
                       f"reaper: {{metrics_port: {self.port}, hija_enforce: false, "
                       f"tracking: {tracking}, interval: {interval}s}}\n")
        env = {**os.environ, "VX11_CONFIG": str(cfg), "PYTHONPATH": str(REPO)}
        self.d = subprocess.Popen([sys.executable, "-m", "vx11d", "reaper"], env=env,
                                  stderr=subprocess.DEVNULL)

    def __enter__(self) -> Reaper:
        deadline = time.monotonic() + 60
        while last_scan(self.port) == 0.0:
            if time.monotonic() > deadline or self.d.poll() is not None:
                self.__exit__()
                raise RuntimeError("vx11d reaper did not scan")
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.d.terminate()
        try:
            self.d.wait(10)
        except subprocess.TimeoutExpired:
            self.d.kill()
            self.d.wait()

    def cpu(self, window: float) -> tuple[float, int]:
        """(CPU % over ``window`` s, scans in it), the window starting right after the
        first scan (``__enter__`` waited for it), so exactly one scan falls inside."""
        first = last_scan(self.port)
        c0, t0 = cpu_seconds(self.d.pid), time.monotonic()
        time.sleep(window)
        c1, t1 = cpu_seconds(self.d.pid), time.monotonic()
        scans = 1 if last_scan(self.port) > first else 0
        return 100 * (c1 - c0) / (t1 - t0), scans


def idle_cpu(tmp: str, window: float, tracking: str = "events", interval: float = 30.0,
             churn: float = 0.0) -> float:
    """CPU % of vx11d reaper over one interval, optionally under process churn."""
    with Reaper(tmp, tracking, interval) as r:
        ch = None
        if churn:
            ch = subprocess.Popen([sys.executable, "-S", "-c", CHURN, str(churn), "1.0"],
                                  stdout=subprocess.PIPE, text=True,
                                  start_new_session=True)
            assert ch.stdout is not None and ch.stdout.readline().strip() == "ready"
        try:
            pct, _ = r.cpu(window)
        finally:
            if ch is not None:
                os.killpg(ch.pid, signal.SIGKILL)
                ch.wait()
        return pct


ZOMBIE_MAKER = r"""
import os, sys, time
n = int(sys.argv[1])
print("ready", flush=True)
for _ in range(n):
    sys.stdin.readline()
    r, w = os.pipe()
    if os.fork() == 0:
        os.write(w, b"%r\n" % time.monotonic())
        os._exit(0)
    os.close(w)
    print(os.read(r, 64).decode().strip(), flush=True)
    os.close(r)
sys.stdin.readline()
"""


def zombie_detect(tmp: str, trials: int) -> list[float]:
    """Seconds from a process's exit (unreaped) to the reaper's zombie gauge counting it."""
    out = []
    with Reaper(tmp, "events") as r:
        z = subprocess.Popen([sys.executable, "-S", "-c", ZOMBIE_MAKER, str(trials)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert z.stdin is not None and z.stdout is not None
        try:
            assert z.stdout.readline().strip() == "ready"
            for _ in range(trials):
                base = metric(r.port, "vx11_reaper_zombie_processes") or 0
                z.stdin.write("\n")
                z.stdin.flush()
                t_exit = float(z.stdout.readline())
                deadline = time.monotonic() + 60
                while (metric(r.port, "vx11_reaper_zombie_processes") or 0) <= base:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the reaper did not see a zombie in 60 s")
                    time.sleep(0.02)
                out.append(time.monotonic() - t_exit)
                time.sleep(0.1)
        finally:
            z.kill()
            z.wait()
    return out


def tracker_matches_scan(seconds: float) -> bool:
    """Churn with zombies and orphans, then: does the tracked table equal a full scan?"""
    t = Tracker()
    t.refresh()
    ch = subprocess.Popen([sys.executable, "-S", "-c", CHURN, "50", "0.2"],
                          stdout=subprocess.PIPE, text=True, start_new_session=True)
    leaky = subprocess.Popen([sys.executable, "-S", "-c", "import os, time\n"
                              "for _ in range(5):\n"
                              "    os.fork() == 0 and os._exit(0)\n"
                              "time.sleep(120)"], start_new_session=True)
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t.handle_events()
            t.check_new()
            time.sleep(0.02)
        os.killpg(ch.pid, signal.SIGKILL)
        ch.wait()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            before = read_uptime_ticks()
            t.refresh()
            a = {p.pid: (p.ppid, p.state == "Z", p.comm, p.uid, p.start)
                 for p in t.snapshot().procs.values()}
            b = {p.pid: (p.ppid, p.state == "Z", p.comm, p.uid, p.start)
                 for p in scan().procs.values()}
            if not [q for q in b.keys() - a.keys() if b[q][4] < before] and \
                    not [q for q in a.keys() & b.keys() if a[q] != b[q]]:
                return True
            time.sleep(0.2)
        return False
    finally:
        os.killpg(leaky.pid, signal.SIGKILL)
        leaky.wait()
        t.close()


def reuse_trials(n: int, tmp: str) -> dict:
    r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m",
                        "tests.integration.reaper_reuse", str(n), f"{tmp}/reuse.db"],
                       cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    if r.returncode != 0:
        raise RuntimeError(f"reuse trial failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions; < 60 s")
    ap.add_argument("--processes", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=0)
    ap.add_argument("--trials", type=int, default=0)
    args = ap.parse_args()
    reps = args.reps or (3 if args.quick else 31)
    trials = args.trials or (20 if args.quick else 500)
    interval = 15.0 if args.quick else 30.0
    window = interval + 0.5  # one interval and a margin: exactly one scan inside
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vx11-bench-") as tmp:
        idle = start_idle(args.processes, tmp)
        try:
            spawn_s = time.monotonic() - t_start
            evaluator = build_evaluator(Config(), "/proc", None)
            scan_ms, ps_ms, eval_ms = [], [], []
            n_scan = n_ps = 0
            for _ in range(reps):
                ms, n_scan = time_scan()
                scan_ms.append(ms)
                ms, n_ps = time_ps()
                ps_ms.append(ms)
                t0 = time.perf_counter()
                evaluator.evaluate(scan("/proc"))
                eval_ms.append((time.perf_counter() - t0) * 1000)
            cpu_pct = idle_cpu(tmp, window, interval=interval)
            cpu_churn = idle_cpu(tmp, window, interval=interval, churn=50)
            cpu_poll = None if args.quick else idle_cpu(tmp, window, "poll", interval)
            detect = zombie_detect(tmp, 10 if args.quick else 50)
        finally:
            stop_idle(idle)
        baseline = None
        if not args.quick:  # the same daemon on the host as it is, without the extra load
            baseline = (idle_cpu(tmp, window), len(scan("/proc").procs))
        matches = tracker_matches_scan(3 if args.quick else 10)
        reuse = reuse_trials(trials, tmp)
    p50 = statistics.median
    res = {
        "processes": n_scan, "ps_processes": n_ps, "reps": reps,
        "scan_ms_p50": round(p50(scan_ms), 2), "ps_ms_p50": round(p50(ps_ms), 2),
        "ratio_vs_ps": round(p50(scan_ms) / p50(ps_ms), 3),
        "scan_eval_ms_p50": round(p50(eval_ms), 2),
        "idle_cpu_percent": round(cpu_pct, 3),
        "idle_cpu_percent_churn": round(cpu_churn, 3),
        **({"idle_cpu_percent_poll": round(cpu_poll, 3)} if cpu_poll is not None else {}),
        "interval_s": interval, "idle_window_s": window,
        "zombie_detect_s_p50": round(p50(detect), 3),
        "zombie_detect_s_p99": round(sorted(detect)[max(0, int(len(detect) * .99 + .5) - 1)],
                                     3),
        "scan_matches_full_scan": matches,
        "reuse_trials": reuse["trials"], "reuse_pid_taken_over": reuse["reused"],
        "wrong_process_signals": reuse["wrong_process_signals"],
        **({"idle_cpu_percent_baseline": round(baseline[0], 3),
            "baseline_processes": baseline[1]} if baseline else {}),
        "spawn_s": round(spawn_s, 1), "total_s": round(time.monotonic() - t_start, 1),
    }
    print(textwrap.dedent(f"""\
        reaper scan vs ps, {res['processes']} processes, {reps} alternating runs (medians)
          reaper scan (stat + fstat per pid)      {res['scan_ms_p50']:>9.2f} ms
          ps -eo pid,ppid,stat,etimes,uid,comm    {res['ps_ms_p50']:>9.2f} ms
          ratio scan/ps                           {res['ratio_vs_ps']:>9.3f}   (goal <= 1.0)
          scan + rules (default config, warm)     {res['scan_eval_ms_p50']:>9.2f} ms
        vx11d reaper, events, {interval:.0f} s interval, {window:.1f} s window
          CPU, idle                               {res['idle_cpu_percent']:>9.3f} %   (goal <= 0.2)
          CPU, 50 starts+exits per s  {res['idle_cpu_percent_churn']:>9.3f} %   (goal <= 0.5)
          zombie detection p50 / p99              {res['zombie_detect_s_p50']:>6.3f} / \
{res['zombie_detect_s_p99']:.3f} s (goal p99 <= 1)
          tracked table == full scan after churn  {res['scan_matches_full_scan']!s:>9}
        PID reuse in a PID namespace: {res['reuse_trials']} trials, PID taken over \
{res['reuse_pid_taken_over']} times
          wrong-process signals                 {res['wrong_process_signals']:>9d} (goal 0)"""))
    if cpu_poll is not None:
        print(f"  polling design (tracking: poll), idle   {res['idle_cpu_percent_poll']:>9.3f} %")
    if "idle_cpu_percent_baseline" in res:
        print(f"  (CPU without the {args.processes} extra processes, "
              f"{res['baseline_processes']} processes: {res['idle_cpu_percent_baseline']:.3f} %)")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
