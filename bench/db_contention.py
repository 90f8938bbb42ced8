#!/usr/bin/env python3
"""8 writer processes doing read-modify-write on one SQLite file: vx11d's DB layer vs raw sqlite3.

Both sides run the same transaction (read a counter, write counter+1, append an event
row) in WAL mode with the same pragmas, in alternating rounds of the same length, in
this one run. The raw side is the plain loop most code writes: BEGIN IMMEDIATE with a
busy timeout, and a "database is locked" surfaces to its caller. vx11d's layer retries
inside ``Database.write``; a lock error must never reach its caller.

    python bench/db_contention.py [--quick] [--writers 8] [--seconds 5] [--rounds 5]

Last line: one JSON object (writers, seconds, commits, commits_per_s, busy_errors,
lost_updates, ratio_vs_raw, raw_*).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sqlite3
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vx11d import db
from vx11d.errors import DbBusy

BUSY_TIMEOUT_MS = 5000


def _bump(c: sqlite3.Connection) -> None:
    n = c.execute("SELECT n FROM counter WHERE id = 1").fetchone()[0]
    c.execute("UPDATE counter SET n = ? WHERE id = 1", (n + 1,))
    c.execute("INSERT INTO events (ts, component, event, subject, data) "
              "VALUES (?, 'bench', 'bump', ?, '{}')", (time.time(), str(n + 1)))


def _hammer(txn, busy_error: type[Exception], start: float, seconds: float,
            out: mp.Queue) -> None:
    """Run ``txn`` from the start line until the end; count commits and surfaced errors."""
    commits = busy = 0
    while time.time() < start:
        time.sleep(0.0005)
    end = start + seconds
    while time.time() < end:
        try:
            txn()
            commits += 1
        except busy_error:
            busy += 1
    out.put((commits, busy))


def vx11_writer(path: str, start: float, seconds: float, out: mp.Queue) -> None:
    d = db.Database(path, busy_timeout_ms=BUSY_TIMEOUT_MS, write_deadline=60)
    d.conn  # noqa: B018 - open before the start line, like a daemon does
    _hammer(lambda: d.write(_bump), DbBusy, start, seconds, out)


def raw_writer(path: str, start: float, seconds: float, out: mp.Queue) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")

    def txn() -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            _bump(conn)
            conn.execute("COMMIT")
        except sqlite3.OperationalError:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    _hammer(txn, sqlite3.OperationalError, start, seconds, out)


def one_round(kind: str, writers: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory(prefix="vx11-bench-") as tmp:
        path = os.path.join(tmp, "vx11.db")
        d = db.Database(path, migrate=True)
        d.write(lambda c: c.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER)"))
        d.write(lambda c: c.execute("INSERT INTO counter VALUES (1, 0)"))
        d.close()
        ctx = mp.get_context("fork")
        out: mp.Queue = ctx.Queue()
        start = time.time() + 0.5
        target = vx11_writer if kind == "vx11" else raw_writer
        procs = [ctx.Process(target=target, args=(path, start, seconds, out))
                 for _ in range(writers)]
        for p in procs:
            p.start()
        try:
            results = [out.get(timeout=seconds + 120) for _ in procs]
        finally:
            for p in procs:
                p.join(timeout=30)
                if p.is_alive():
                    p.kill()
        commits = sum(r[0] for r in results)
        busy = sum(r[1] for r in results)
        final = db.Database(path, readonly=True).query("SELECT n FROM counter")[0][0]
        check = db.check(db.Database(path))
    return {"commits": commits, "busy": busy, "lost": commits - final,
            "per_s": commits / seconds, "integrity_ok": not check}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 rounds of 2 s per side")
    ap.add_argument("--writers", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.rounds = 2.0, 3
    runs: dict[str, list[dict]] = {"vx11": [], "raw": []}
    for i in range(args.rounds):
        for kind in (("vx11", "raw") if i % 2 == 0 else ("raw", "vx11")):
            runs[kind].append(one_round(kind, args.writers, args.seconds))
    print(f"{'side':<6} {'round':>5} {'commits':>8} {'commits/s':>10} {'busy':>6} {'lost':>5}")
    for kind, rs in runs.items():
        for i, r in enumerate(rs):
            print(f"{kind:<6} {i:>5} {r['commits']:>8} {r['per_s']:>10.0f} {r['busy']:>6} "
                  f"{r['lost']:>5}")
    med = {k: statistics.median(r["per_s"] for r in rs) for k, rs in runs.items()}
    ours, raw = runs["vx11"], runs["raw"]
    result = {
        "writers": args.writers,
        "seconds": args.seconds * args.rounds,
        "rounds": args.rounds,
        "commits": sum(r["commits"] for r in ours),
        "commits_per_s": round(med["vx11"], 1),
        "busy_errors": sum(r["busy"] for r in ours),
        "lost_updates": sum(r["lost"] for r in ours),
        "integrity_ok": all(r["integrity_ok"] for r in ours),
        "raw_commits_per_s": round(med["raw"], 1),
        "raw_busy_errors": sum(r["busy"] for r in raw),
        "raw_lost_updates": sum(r["lost"] for r in raw),
        # Each round pairs one run of each side back to back: the median of those
        # paired ratios cancels the machine's drift better than a ratio of medians.
        "ratio_vs_raw": round(statistics.median(o["per_s"] / r["per_s"]
                                                for o, r in zip(ours, raw, strict=True)), 3),
        "ratio_of_medians": round(med["vx11"] / med["raw"], 3),
    }
    print(f"median commits/s: vx11 {med['vx11']:.0f}, raw {med['raw']:.0f}, "
          f"ratio {result['ratio_vs_raw']}; goals: busy_errors 0, lost_updates 0, ratio >= 0.7")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
