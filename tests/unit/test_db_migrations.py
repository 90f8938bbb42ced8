"""Migrations, pragmas and the schema's own guarantees (append-only events, live ports)."""

from __future__ import annotations

import sqlite3
import time

import pytest

from vx11d import db, migrations


def test_fresh_db_has_schema_v1_and_pragmas(dbpath):
    d = db.Database(dbpath)
    names = {r[0] for r in d.query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"spawner_hijas", "events", "activations", "rotations", "reaper_actions",
            "schema_migrations"} <= names
    assert d.query("PRAGMA journal_mode")[0][0] == "wal"
    assert d.query("PRAGMA foreign_keys")[0][0] == 1
    assert d.query("PRAGMA synchronous")[0][0] == 1  # NORMAL
    assert d.query("PRAGMA busy_timeout")[0][0] == 1000
    assert [r[0] for r in d.query("SELECT name FROM schema_migrations")] == \
        [n for n, _ in migrations.MIGRATIONS]
    assert db.check(d) == []


def test_migrations_apply_once(dbpath):
    d = db.Database(dbpath)
    assert db.apply_migrations(d) == []
    assert len(d.query("SELECT * FROM schema_migrations")) == len(migrations.MIGRATIONS)


def test_failed_migration_rolls_back_with_its_record(dbpath, monkeypatch):
    def m999_broken(conn):
        conn.execute("CREATE TABLE half_done (x)")
        raise sqlite3.OperationalError("boom")

    monkeypatch.setattr(migrations, "MIGRATIONS",
                        [*migrations.MIGRATIONS, ("m999_broken", m999_broken)])
    d = db.Database(dbpath)
    with pytest.raises(db.DbError, match="boom"):
        db.apply_migrations(d)
    assert not d.query("SELECT 1 FROM sqlite_master WHERE name='half_done'")
    assert not d.query("SELECT 1 FROM schema_migrations WHERE name='m999_broken'")
    assert "migrations not applied: m999_broken" in db.check(d)


def test_events_are_append_only(dbpath):
    d = db.Database(dbpath)
    eid = d.event("test", "something", subject="h1", n=1)
    with pytest.raises(db.DbError, match="append-only"):
        d.write(lambda c: c.execute("UPDATE events SET event='x' WHERE id=?", (eid,)))
    with pytest.raises(db.DbError, match="append-only"):
        d.write(lambda c: c.execute("DELETE FROM events"))
    assert d.query("SELECT event, subject, data FROM events")[0][:] == \
        ("something", "h1", '{"n": 1}')


def _hija(c, hid, port, status="running"):
    c.execute("INSERT INTO spawner_hijas (id, template, ttl_s, port, unit, status, created_at) "
              "VALUES (?, 't', 10, ?, ?, ?, ?)", (hid, port, f"vx11-hija-{hid}.service", status,
                                                  time.time()))


def test_a_port_is_held_by_one_live_hija_only(dbpath):
    d = db.Database(dbpath)
    d.write(lambda c: _hija(c, "a", 20001))
    with pytest.raises(db.DbError, match="UNIQUE"):
        d.write(lambda c: _hija(c, "b", 20001))
    d.write(lambda c: c.execute("UPDATE spawner_hijas SET status='expired' WHERE id='a'"))
    d.write(lambda c: _hija(c, "b", 20001))  # released once the first one ended


def test_status_values_are_checked(dbpath):
    d = db.Database(dbpath)
    with pytest.raises(db.DbError, match="CHECK"):
        d.write(lambda c: _hija(c, "x", None, status="zombie"))


def test_foreign_keys_enforced(dbpath):
    d = db.Database(dbpath)
    with pytest.raises(db.DbError, match="FOREIGN KEY"):
        d.write(lambda c: c.execute(
            "INSERT INTO reaper_actions (ts, pid, rule, action, outcome, hija_id) "
            "VALUES (0, 1, 'r', 'observe', 'seen', 'nope')"))


def test_write_rolls_back_on_exception(dbpath):
    d = db.Database(dbpath)

    def fn(c):
        _hija(c, "r1", None)
        raise ValueError("caller bug")

    with pytest.raises(ValueError):
        d.write(fn)
    assert d.query("SELECT count(*) FROM spawner_hijas")[0][0] == 0


def test_readonly_handle_refuses_writes(dbpath):
    ro = db.Database(dbpath, readonly=True)
    with pytest.raises(db.DbError, match="read-only"):
        ro.write(lambda c: None)
    with pytest.raises(db.DbError):
        ro.query("INSERT INTO events (ts, component, event) VALUES (0, 'a', 'b')")


def test_schema_sql_and_map_cover_every_table(dbpath, tmp_path):
    d = db.Database(dbpath)
    sql = db.schema_sql(d)
    fresh = sqlite3.connect(tmp_path / "replay.db")
    fresh.executescript(sql)  # DB_SCHEMA replays into an empty DB
    tables = {r[0] for r in d.query("SELECT name FROM sqlite_master WHERE type='table' "
                                    "AND name NOT LIKE 'sqlite_%'")}
    mapped = {ln.split("\t")[0] for ln in db.schema_map().splitlines()[1:]}
    assert tables == mapped


def test_reopens_after_fork(dbpath):
    import os

    d = db.Database(dbpath)
    d.event("test", "parent")
    pid = os.fork()
    if pid == 0:
        try:
            d.event("test", "child")
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [r[0] for r in d.query("SELECT event FROM events ORDER BY id")] == ["parent", "child"]


def test_db_file_is_created_group_writable(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        path = tmp_path / "state" / "vx11.db"
        db.Database(str(path), migrate=True).event("test", "x")
    finally:
        os.umask(old)
    for f in (path, path.with_name("vx11.db-wal"), path.with_name("vx11.db-shm")):
        assert stat.S_IMODE(f.stat().st_mode) == 0o660, f


def test_oom_migration_keeps_rows_and_references(dbpath, monkeypatch):
    """m003 rebuilds spawner_hijas (a CHECK cannot change in place): rows, the reaper's
    references to them and both indexes survive; ``oom`` and the memory columns exist."""
    path = dbpath + ".old"
    upto = [m for m in migrations.MIGRATIONS if m[0] < "m003"]
    monkeypatch.setattr(migrations, "MIGRATIONS", upto)
    d = db.Database(path, migrate=True)
    d.write(lambda c: _hija(c, "aaaaaaaaaa", 20001))
    d.write(lambda c: c.execute(
        "INSERT INTO reaper_actions (ts, pid, comm, rule, action, outcome, hija_id) "
        "VALUES (1, 2, 'x', 'r', 'observe', 'ok', 'aaaaaaaaaa')"))
    with pytest.raises(db.DbError):
        d.write(lambda c: c.execute("UPDATE spawner_hijas SET status='oom'"))
    d.close()
    monkeypatch.undo()
    d = db.Database(path, migrate=True)
    assert db.check(d) == []
    assert d.query("PRAGMA foreign_keys")[0][0] == 1
    d.write(lambda c: c.execute("UPDATE spawner_hijas SET status='oom', memory_max=33554432, "
                                "memory_peak=33554432"))
    row = d.query("SELECT id, port, status, memory_peak FROM spawner_hijas")[0]
    assert tuple(row) == ("aaaaaaaaaa", 20001, "oom", 33554432)
    assert d.query("SELECT hija_id FROM reaper_actions")[0][0] == "aaaaaaaaaa"
    idx = {r[0] for r in d.query("SELECT name FROM sqlite_master WHERE type='index' "
                                 "AND tbl_name='spawner_hijas'")}
    assert {"spawner_hijas_live_port", "spawner_hijas_status"} <= idx
    with pytest.raises(db.DbError, match="FOREIGN KEY"):
        d.write(lambda c: c.execute("DELETE FROM spawner_hijas"))


def test_requested_by_migration_keeps_old_rows_readable(dbpath, monkeypatch):
    """m004 adds who asked (spawn, stop, end of a window); rows from before read as None
    through the same code that reads new ones."""
    from vx11d import hijas

    path = dbpath + ".old"
    monkeypatch.setattr(migrations, "MIGRATIONS",
                        [m for m in migrations.MIGRATIONS if m[0] < "m004"])
    d = db.Database(path, migrate=True)
    d.write(lambda c: _hija(c, "aaaaaaaaaa", 20001))
    d.close()
    monkeypatch.undo()
    d = db.Database(path, migrate=True)
    assert db.check(d) == []
    old = hijas.get(d, "aaaaaaaaaa")
    assert old["requested_by"] is None and old["stop_requested_by"] is None
    stopped = hijas.request_stop(d, "aaaaaaaaaa", requested_by="ops", client="http:10.0.0.2")
    assert stopped["stop_requested_by"] == "ops"
    cols = {r[1] for r in d.query("PRAGMA table_info(activations)")}
    assert "ended_by" in cols


def test_template_ended_index_serves_the_failed_streak_query(dbpath, monkeypatch):
    """m005 (issue 24): the failed-streak gauge's query by template, newest end first,
    uses an index instead of scanning every hija; an older DB gets it on migrate."""
    from vx11d.madre import streaks

    path = dbpath + ".old"
    monkeypatch.setattr(migrations, "MIGRATIONS",
                        [m for m in migrations.MIGRATIONS if m[0] < "m005"])
    d = db.Database(path, migrate=True)
    d.write(lambda c: _hija(c, "aaaaaaaaaa", 20001, status="failed"))
    d.close()
    monkeypatch.undo()
    d = db.Database(path, migrate=True)
    assert db.check(d) == []
    plan = " ".join(str(r[3]) for r in d.query("EXPLAIN QUERY PLAN " + streaks.SQL, ("t",)))
    assert "spawner_hijas_template_ended" in plan, plan
    assert [r[0] for r in d.query(streaks.SQL, ("t",))] == ["failed"]


def _mountinfo(tmp_path, *lines: str) -> str:
    p = tmp_path / "mountinfo"
    p.write_text("".join(f"{ln}\n" for ln in lines))
    return str(p)


ROOT = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw"
LOWER = "36 22 0:32 / /var/lib/vx11 rw,relatime shared:5 - tmpfs tmpfs rw"
UPPER_STALE = "41 36 0:40 / /var/lib/vx11 ro,relatime - tmpfs vx11-state rw"
UPPER_RW = "41 36 0:40 / /var/lib/vx11 rw,relatime - tmpfs vx11-state rw"
LOWER_STALE = "36 22 0:32 / /var/lib/vx11 ro,relatime shared:5 - tmpfs tmpfs rw"


def test_stale_read_only_view_reads_the_top_of_stacked_mounts(tmp_path):
    """Issue 21 (faults list): with mounts stacked on the state dir (a tmpfs mounted over
    another), the first one listed was taken, not the one this process sees."""
    path = "/var/lib/vx11/vx11.db"
    assert db.stale_read_only_view(path, _mountinfo(tmp_path, ROOT, LOWER, UPPER_STALE))
    assert not db.stale_read_only_view(path, _mountinfo(tmp_path, ROOT, LOWER_STALE,
                                                        UPPER_RW))
    # listed out of order, the parent ids still say which is on top
    assert db.stale_read_only_view(path, _mountinfo(tmp_path, ROOT, UPPER_STALE, LOWER))
    assert not db.stale_read_only_view(path, _mountinfo(tmp_path, ROOT, LOWER))
    assert db.stale_read_only_view(path, _mountinfo(tmp_path, ROOT, LOWER_STALE))
