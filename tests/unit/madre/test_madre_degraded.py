"""madre when the DB refuses writes: it keeps supervising, holds the transitions it saw,
records them once the DB takes writes again, and re-creates rows a restore lost.

Faults are real SQLite refusals (``PRAGMA query_only`` makes every write fail with
"attempt to write a readonly database", as a read-only state dir does) and a real
deleted/restored file; systemd is the fake adapter (the system tier has the real one).
"""

from __future__ import annotations

import asyncio
import os
import shutil

import pytest
from prometheus_client import CollectorRegistry

from tests.fake_systemd import FakeSystemd
from vx11d import config, hijas
from vx11d.db import Database
from vx11d.madre.daemon import MadreService

CFG = """
madre:
  backstop_grace: 2s
  templates:
    sleeper: {command: [/usr/bin/sleep, infinity], max_ttl: 60s}
"""


@pytest.fixture
def svc(dbpath, tmp_path):
    cfg = config.parse(CFG, "t.yml")
    db = Database(dbpath)
    sd = FakeSystemd()
    registry = CollectorRegistry()
    s = MadreService(cfg, db, sd, registry, wake_path=str(tmp_path / "wake.sock"))
    s.registry = registry
    s.migrated = True
    s.dbfile.opened()
    yield s
    sd.close()
    db.close()


def tick(s: MadreService) -> None:
    s.health.next_try = 0.0  # no waiting out the backoff in a test
    asyncio.run(s.tick())


def spawn(s: MadreService) -> dict:
    row = hijas.request_spawn(s.db, s.cfg, "sleeper", 30, {}, "test")
    s.reg.process_requests()
    s.reg.on_changes(s.sd.drain())
    got = hijas.get(s.db, row["id"])
    assert got["status"] == "running"
    return got


def read_only(s: MadreService, on: bool) -> None:
    s.db.conn.execute(f"PRAGMA query_only={1 if on else 0}")


def metric(s: MadreService, name: str, **labels: str) -> float:
    v = s.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def test_madre_exited_on_failed_write_now_holds_the_end_and_records_it_later(svc):
    """Regression (issue 10): a hija ending while the DB refused writes made madre exit
    69 and crash-loop; reconcile later marked the hija lost."""
    h = spawn(svc)
    read_only(svc, True)
    svc.sd.end(h["unit"], result="timeout", status=15)
    tick(svc)  # the end arrives with the DB refusing writes: no exception
    assert hijas.get(svc.db, h["id"])["status"] == "running"
    assert len(svc.reg.held) == 1
    assert svc.status() == "0 hijas running; degraded: state read-only, 1 transition pending"
    assert metric(svc, "vx11_madre_degraded", cause="read_only") == 1
    assert metric(svc, "vx11_madre_transitions_pending") == 1
    tick(svc)  # still refused: still held, nothing marked lost by reconcile/backstop
    assert hijas.get(svc.db, h["id"])["status"] == "running"
    read_only(svc, False)
    tick(svc)
    row = hijas.get(svc.db, h["id"])
    assert row["status"] == "expired" and row["result"] == "timeout"
    assert not svc.reg.held and not svc.health.degraded
    assert "degraded" not in svc.status()
    assert metric(svc, "vx11_madre_degraded", cause="read_only") == 0
    evs = [r["event"] for r in svc.db.query(
        "SELECT event FROM events WHERE subject = ? ORDER BY id", (h["id"],))]
    assert evs.count("hija_expired") == 1
    assert svc.db.query("SELECT count(*) FROM events WHERE event = 'madre_db_recovered'"
                        )[0][0] == 1


def test_no_new_spawn_starts_while_madre_cannot_record_it(svc):
    row = hijas.request_spawn(svc.db, svc.cfg, "sleeper", 30, {}, "test")
    read_only(svc, True)
    tick(svc)
    assert hijas.get(svc.db, row["id"])["status"] == "requested"
    assert not [c for c in svc.sd.calls if c[0] == "start_transient"]
    assert svc.health.degraded
    read_only(svc, False)
    tick(svc)
    tick(svc)
    assert hijas.get(svc.db, row["id"])["status"] == "running"


def test_reconcile_marked_a_collected_hija_lost_now_reads_its_end_from_the_journal(svc):
    """A hija that ended (and was collected) while madre was down is recorded with the
    end systemd logged, not ``lost``."""
    h = spawn(svc)
    svc.sd.end(h["unit"], result="success", status=0)  # madre "down": nobody drains
    svc.sd.drain()
    fresh = MadreService(svc.cfg, svc.db, svc.sd, CollectorRegistry(),
                         wake_path=svc.wake_path)
    fixed = fresh.reg.reconcile()
    row = hijas.get(svc.db, h["id"])
    assert row["status"] == "exited" and fixed["lost"] == 0, (row, fixed)
    assert "journal" in row["reason"]


def test_deleted_db_is_noticed_writes_refused_and_rows_restored(svc, tmp_path):
    """The DB file deleted: madre stops writing (its handle points at a file nobody else
    sees), holds the end it saw, and once an older copy is restored re-creates the rows
    the copy lacks, with their final state."""
    backup = tmp_path / "backup.db"
    svc.db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copy(svc.db.path, backup)  # taken before the spawns: it lacks their rows
    a = spawn(svc)
    b = spawn(svc)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(svc.db.path + suffix):
            os.unlink(svc.db.path + suffix)
    tick(svc)
    assert svc.health.cause == "db_missing"
    assert "degraded: DB file missing" in svc.status()
    svc.sd.end(a["unit"], result="timeout", status=15)
    tick(svc)
    assert len(svc.reg.held) == 1
    assert not os.path.exists(svc.db.path)  # nothing written to a new, split file
    shutil.copy(backup, svc.db.path)
    tick(svc)
    assert not svc.health.degraded and not svc.reg.held
    db2 = Database(svc.db.path, readonly=True)
    rows = {r["id"]: r for r in db2.query("SELECT * FROM spawner_hijas")}
    assert rows[a["id"]]["status"] == "expired"
    assert rows[b["id"]]["status"] == "running" and rows[b["id"]]["unit"] == b["unit"]
    db2.close()
    assert svc.sd.units.get(b["unit"], {}).get("ActiveState") == "active"  # not orphaned


def test_starting_row_whose_unit_never_started_is_failed_not_lost(svc):
    """madre killed between recording `starting` and StartTransientUnit: the journal
    has nothing about the unit, so the hija never ran: `failed`, said why."""
    row = hijas.request_spawn(svc.db, svc.cfg, "sleeper", 30, {}, "test")
    svc.db.write(lambda c: c.execute("UPDATE spawner_hijas SET status = 'starting', "
                                     "started_at = 1 WHERE id = ?", (row["id"],)))
    svc.sd.results[row["unit"]] = {"NeverStarted": True}
    fixed = svc.reg.reconcile()
    got = hijas.get(svc.db, row["id"])
    assert got["status"] == "failed" and "never started" in got["reason"], got
    assert fixed["lost"] == 0


def test_an_end_not_yet_in_the_journal_is_awaited_not_called_lost(svc):
    """Regression (chaos soak, 1 in 5,930): madre restarted right after a hija's unit
    was collected read the journal before journald had written PID 1's end line, and
    called the hija lost though systemd logged `timeout`."""
    h = spawn(svc)
    svc.sd.end(h["unit"], result="timeout", status=15)
    svc.sd.drain()  # madre "down": the signals are gone
    logged = svc.sd.results.pop(h["unit"])
    svc.sd.results[h["unit"]] = {"EndNotLogged": True}
    fresh = MadreService(svc.cfg, svc.db, svc.sd, CollectorRegistry(),
                         wake_path=svc.wake_path)
    fixed = fresh.reg.reconcile()
    assert fixed["lost"] == 0 and hijas.get(svc.db, h["id"])["status"] == "running"
    assert fresh.reg.end_awaited()
    svc.sd.results[h["unit"]] = logged  # journald caught up
    fresh.reg.reconcile()
    assert hijas.get(svc.db, h["id"])["status"] == "expired"
    assert not fresh.reg.end_awaited()
