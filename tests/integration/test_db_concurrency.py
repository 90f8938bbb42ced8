"""Several real processes on one DB file: no lock error surfaces, no update or commit is lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from vx11d import db

REPO = Path(__file__).resolve().parents[2]


def worker(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.integration.dbworker", *args],
                            cwd=REPO, stdout=subprocess.PIPE, text=True, **kw)


def test_eight_writers_read_modify_write_without_lost_updates(dbpath):
    d = db.Database(dbpath)
    d.write(lambda c: c.execute("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER)"))
    d.write(lambda c: c.execute("INSERT INTO counter VALUES (1, 0)"))
    procs = [worker("rmw", dbpath, "3") for _ in range(8)]
    results = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0
            results.append(tuple(int(x) for x in out.split()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    commits = sum(r[0] for r in results)
    busy = sum(r[1] for r in results)
    assert busy == 0, "a 'database is locked' reached a caller"
    assert commits > 100, f"only {commits} commits in 3 s: the writers barely ran"
    assert d.query("SELECT n FROM counter")[0][0] == commits
    assert d.query("SELECT count(*) FROM events WHERE event='bump'")[0][0] == commits
    assert db.check(d) == []


def test_sigkill_mid_transaction_50_rounds_loses_no_committed_row(dbpath):
    d = db.Database(dbpath)
    d.write(lambda c: c.execute("CREATE TABLE seqrows (seq INTEGER, part INTEGER, "
                                "PRIMARY KEY (seq, part))"))
    rng = random.Random(1234)
    committed: list[int] = []
    next_seq = 0
    for _ in range(50):
        p = worker("seq", dbpath, str(next_seq))
        try:
            first = p.stdout.readline()  # at least one commit, so the kill lands while busy
            assert first, "writer died before its first commit"
            committed.append(int(first))
            time.sleep(rng.uniform(0.0, 0.03))
            os.kill(p.pid, signal.SIGKILL)
        finally:
            if p.poll() is None:
                p.kill()
            out, _ = p.communicate(timeout=30)
        committed += [int(x) for x in out.split()]
        assert p.returncode == -signal.SIGKILL
        next_seq = max(committed) + 1000
    assert db.check(d) == []
    rows = d.query("SELECT seq, count(*) FROM seqrows GROUP BY seq")
    have = {r[0]: r[1] for r in rows}
    missing = [s for s in committed if s not in have]
    assert not missing, f"committed rows lost: {missing[:10]}"
    assert all(n == 4 for n in have.values()), "a transaction was half applied"
    events = d.query("SELECT count(*) FROM events WHERE event='seq'")[0][0]
    assert events == len(have)
