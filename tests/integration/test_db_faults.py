"""DB faults on real files: each classified by its SQLite code, a lost file never written on."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support import poll_for
from vx11d import db
from vx11d.errors import DbBusy, DbFull, DbIntegrityError, DbMissing, DbReadOnly, DbReplaced

REPO = Path(__file__).resolve().parents[2]


def _db_files(path: str) -> list[str]:
    d, base = os.path.split(path)
    return [os.path.join(d, f) for f in os.listdir(d) if f.startswith(base)]


def test_db_deleted_while_open_refuses_writes_and_saves_its_content(dbpath):
    d = db.Database(dbpath)
    d.event("test", "before")
    for f in _db_files(dbpath):
        os.unlink(f)
    with pytest.raises(DbMissing) as e:
        d.event("test", "after")
    assert e.value.cause == "db_missing"
    assert ".rescued-" in str(e.value)
    with pytest.raises(DbMissing):  # reads too: the open file is no one else's truth
        d.query("SELECT 1")
    assert d.health()[:2] == ("degraded", "db_missing")
    assert not os.path.exists(dbpath), "a running handle re-created the DB by itself"
    rescued = [f for f in os.listdir(os.path.dirname(dbpath)) if ".rescued-" in f]
    assert len(rescued) == 1
    saved = sqlite3.connect(os.path.join(os.path.dirname(dbpath), rescued[0]))
    assert [r[0] for r in saved.execute("SELECT event FROM events")] == ["before"]
    saved.close()
    # the operator restores the rescued copy: the daemon takes it and writes again
    os.rename(os.path.join(os.path.dirname(dbpath), rescued[0]), dbpath)
    assert d.probe() is None
    assert d.health() == ("ok", "", "")
    d.event("test", "restored")
    assert [r[0] for r in db.Database(dbpath).query("SELECT event FROM events ORDER BY id")] \
        == ["before", "restored"]


def test_db_replaced_by_an_empty_file_is_not_adopted(dbpath):
    d = db.Database(dbpath)
    d.event("test", "x")
    os.rename(dbpath, dbpath + ".old")
    Path(dbpath).write_bytes(b"")
    with pytest.raises(DbReplaced) as e:
        d.event("test", "y")
    assert e.value.cause == "db_replaced"
    assert isinstance(d.probe(), DbReplaced)
    os.unlink(dbpath)
    subprocess.run([sys.executable, "-m", "vx11d.ctl.main", "db", "migrate"], cwd=REPO,
                   env={**os.environ, "VX11_CONFIG": _cfg(dbpath)}, check=True,
                   capture_output=True)
    assert d.probe() is None
    d.event("test", "z")


def _cfg(dbpath: str) -> str:
    path = dbpath + ".yml"
    Path(path).write_text(f"db:\n  path: {dbpath}\n")
    return path


def test_a_daemon_does_not_recreate_a_deleted_db_at_start(dbpath):
    for f in _db_files(dbpath):
        os.unlink(f)
    with pytest.raises(DbMissing, match="existed here"):
        db.Database(dbpath, migrate=True)
    d = db.Database(dbpath)
    assert isinstance(d.start(), DbMissing)
    assert d.health()[1] == "db_missing"
    assert not os.path.exists(dbpath)
    db.Database(dbpath, migrate=True, create=True)  # what `vx11ctl db migrate` does
    assert d.probe() is None and d.health()[0] == "ok"


def test_disk_full_is_classified_by_sqlite_full_and_clears_by_itself(dbpath):
    d = db.Database(dbpath)
    pages = d.query("PRAGMA page_count")[0][0]
    d.write(lambda c: c.execute(f"PRAGMA max_page_count={pages}"))
    with pytest.raises(DbFull) as e:
        d.event("test", "big", blob="x" * 100_000)
    assert e.value.cause == "disk_full"
    assert d.health()[1] == "disk_full"
    d.write(lambda c: c.execute("PRAGMA max_page_count=1073741823"))
    assert d.health()[1] == "disk_full", "a commit that wrote nothing proved nothing"
    assert d.probe() is None and d.health() == ("ok", "", "")


def test_read_only_is_classified_by_sqlite_readonly(dbpath):
    d = db.Database(dbpath)
    d.conn.execute("PRAGMA query_only=1")
    with pytest.raises(DbReadOnly) as e:
        d.event("test", "x")
    assert e.value.cause == "read_only"
    d.conn.execute("PRAGMA query_only=0")
    assert d.probe() is None and d.health()[0] == "ok"


def test_constraint_is_not_a_fault(dbpath):
    d = db.Database(dbpath)
    with pytest.raises(DbIntegrityError):
        d.write(lambda c: c.execute("INSERT INTO activations (component, created_at, "
                                    "expires_at) VALUES ('x', 2, 1)"))
    assert d.health()[0] == "ok"


def test_lock_held_by_another_process_is_db_busy_within_the_deadline_and_reads_go_on(dbpath):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys, time\n"
         f"c = sqlite3.connect({dbpath!r}, isolation_level=None)\n"
         "c.execute('BEGIN IMMEDIATE'); print('held', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        d = db.Database(dbpath, busy_timeout_ms=100, write_deadline=0.5)
        done = threading.Event()
        errs: list[Exception] = []

        def writer():
            try:
                d.event("test", "x")
            except DbBusy as e:
                errs.append(e)
            done.set()

        threading.Thread(target=writer, daemon=True).start()
        assert d.query("SELECT count(*) FROM events")[0][0] == 0  # not stuck behind it
        poll_for(done.is_set, timeout=10, what="the write to give up")
        assert errs and errs[0].cause == "locked"
        assert d.health()[1] == "locked"
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
    assert d.probe() is None and d.health()[0] == "ok"
