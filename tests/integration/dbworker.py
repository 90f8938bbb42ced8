"""A real writer process for the DB tests: ``python -m tests.integration.dbworker MODE DB ...``.

rmw SECONDS: read-modify-write a counter until the deadline; prints "commits busy".
seq: insert numbered rows forever, in transactions that take a while; prints each
     committed sequence number after its COMMIT returned (the parent kills it mid-way).
"""

import sys
import time

from vx11d import db
from vx11d.errors import DbBusy


def rmw(path: str, seconds: float) -> None:
    d = db.Database(path, write_deadline=60)
    commits = busy = 0

    def bump(c):
        n = c.execute("SELECT n FROM counter WHERE id = 1").fetchone()[0]
        c.execute("UPDATE counter SET n = ? WHERE id = 1", (n + 1,))
        db.record_event(c, "test", "bump", subject=str(n + 1))

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            d.write(bump)
            commits += 1
        except DbBusy:
            busy += 1
    print(commits, busy, flush=True)


def seq(path: str, start: int) -> None:
    d = db.Database(path)
    i = start

    def txn(c, i=0):
        c.execute("INSERT INTO seqrows (seq, part) VALUES (?, 0)", (i,))
        time.sleep(0.002)  # hold the transaction open so kills land inside it
        for part in range(1, 4):
            c.execute("INSERT INTO seqrows (seq, part) VALUES (?, ?)", (i, part))
        db.record_event(c, "test", "seq", subject=str(i))

    while True:
        d.write(lambda c, i=i: txn(c, i))
        print(i, flush=True)
        i += 1


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    if mode == "rmw":
        rmw(path, float(sys.argv[3]))
    else:
        seq(path, int(sys.argv[3]))
