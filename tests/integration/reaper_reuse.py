"""PID-reuse trials for the reaper's kill path; run as PID 1 of a fresh PID namespace:

    unshare --pid --fork --mount-proc python -m tests.integration.reaper_reuse N

Each trial: a target process is scanned (and found by a terminate rule), then it exits
and its PID is forced onto a newcomer (``ns_last_pid = PID - 1`` before forking, as CRIU
does); then the reaper acts on the stale finding. The newcomer reports any signal it
gets through a pipe. Prints one JSON line: trials, reused, wrong_process_signals,
outcomes.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import sys
import time
from collections import Counter

from prometheus_client import CollectorRegistry

from vx11d.config import parse
from vx11d.db import Database
from vx11d.reaper.daemon import ReaperService
from vx11d.reaper.metrics import ReaperMetrics
from vx11d.reaper.proc import scan

CONFIG = """
reaper:
  protected_units: []
  max_kills_per_scan: 1000
  breaker_max_signals: 10000000
  breaker_min_matches: 10000000
  rules: [{name: target, comm: "^reuse-target$", action: terminate, grace: 0}]
"""


def _child(comm: str, report_fd: int | None) -> None:
    with open("/proc/self/comm", "w") as f:
        f.write(comm)
    if report_fd is not None:
        def hit(sig: int, _frame: object) -> None:
            os.write(report_fd, f"{sig}\n".encode())
        for s in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGINT,
                  signal.SIGUSR1):
            signal.signal(s, hit)
        os.write(report_fd, b"ready\n")  # handlers installed
    while True:
        signal.pause()


def fork_child(comm: str, report_fd: int | None = None) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            _child(comm, report_fd)
        finally:
            os._exit(0)
    return pid


def trial(svc: ReaperService, outcomes: Counter) -> tuple[bool, bool]:
    """One trial: (PID was reused, newcomer got a signal)."""
    target = fork_child("reuse-target")
    deadline = time.monotonic() + 10
    while True:  # the reaper signals only processes >= 2 ticks old: scan until it does
        rep = svc.evaluator.evaluate(scan("/proc"))
        if any(f.proc.pid == target and f.action == "terminate" for f in rep.findings):
            break
        assert time.monotonic() < deadline, "the target was not found"
        time.sleep(0.005)
    os.kill(target, signal.SIGKILL)
    os.waitpid(target, 0)
    r, w = os.pipe()
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(target - 1))
    newcomer = fork_child("reuse-target", w)
    reused = newcomer == target
    try:
        ready, _, _ = select.select([r], [], [], 10)
        assert ready and os.read(r, 6) == b"ready\n", "the newcomer did not start"
        before = svc.signals_sent
        svc.act(rep)
        svc._flush()
        for _pd, outcome, _sig in svc.term.poll():
            outcomes[outcome] += 1
        ready, _, _ = select.select([r], [], [], 0.05)
        got = bool(ready) or svc.signals_sent != before
        alive = os.waitpid(newcomer, os.WNOHANG) == (0, 0)
        return reused, got or not alive
    finally:
        os.kill(newcomer, signal.SIGKILL)
        os.waitpid(newcomer, 0)
        os.close(r)
        os.close(w)
        svc.term.close()


def main() -> int:
    logging.getLogger("vx11").setLevel(logging.ERROR)  # one pid_reused warning per trial
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    dbpath = sys.argv[2] if len(sys.argv) > 2 else ":memory:"
    db = Database(dbpath, migrate=True) if dbpath != ":memory:" else None
    svc = ReaperService(parse(CONFIG, "reuse.yml"), db, ReaperMetrics(CollectorRegistry()))
    outcomes: Counter = Counter()
    reused = wrong = 0
    for _ in range(n):
        ok, hit = trial(svc, outcomes)
        reused += ok
        wrong += hit
    if db is not None:
        for row in db.query("SELECT outcome, count(*) FROM reaper_actions GROUP BY outcome"):
            outcomes[f"recorded_{row[0]}"] = row[1]
    print(json.dumps({"trials": n, "reused": reused, "wrong_process_signals": wrong,
                      "outcomes": dict(outcomes)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
