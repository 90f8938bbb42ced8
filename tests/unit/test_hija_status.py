"""HijaStatus: the one definition of a hija's statuses matches what the DB allows."""

from __future__ import annotations

import json
import re
import time

import pytest

from vx11d import db, hijas
from vx11d.errors import DbIntegrityError
from vx11d.hijas import ENDED, ENDED_SQL, LIVE, LIVE_SQL, SETTLED, HijaStatus


def _schema_sql(d: db.Database, name: str) -> str:
    return d.query("SELECT sql FROM sqlite_master WHERE name = ?", (name,))[0][0]


def _insert(d: db.Database, hid: str, status: object) -> None:
    d.write(lambda c: c.execute(
        "INSERT INTO spawner_hijas (id, template, ttl_s, unit, status, created_at) "
        "VALUES (?, 'sleeper', 5, ?, ?, ?)", (hid, hijas.unit_name(hid), status, time.time())))


def test_hija_status_enum_is_exactly_what_the_schema_check_constraint_allows(dbpath):
    d = db.Database(dbpath)  # freshly migrated: every migration applied
    m = re.search(r"CHECK \(status IN\s*\(([^)]*)\)\)", _schema_sql(d, "spawner_hijas"))
    assert m is not None, "no CHECK constraint on spawner_hijas.status"
    allowed = re.findall(r"'([a-z_]+)'", m.group(1))
    assert sorted(allowed) == sorted(s.value for s in HijaStatus)
    for i, status in enumerate(HijaStatus):  # each member really passes the constraint
        _insert(d, f"ok{i:08d}", status)
    assert {r[0] for r in d.query("SELECT status FROM spawner_hijas")} == set(HijaStatus)
    with pytest.raises(DbIntegrityError):
        _insert(d, "bad0000000", "zombie")


def test_live_and_ended_split_the_statuses_and_match_the_live_port_index(dbpath):
    assert set(LIVE).isdisjoint(ENDED) and set(LIVE) | set(ENDED) == set(HijaStatus)
    assert set(SETTLED) == set(HijaStatus) - {HijaStatus.REQUESTED, HijaStatus.STARTING}
    # ports.py queries name the index's own list, so SQLite can use the partial index
    d = db.Database(dbpath)
    assert LIVE_SQL in _schema_sql(d, "spawner_hijas_live_port")
    assert ENDED_SQL == "('expired','exited','failed','stopped','lost','oom')"


def test_hija_status_is_stored_and_serialised_as_its_plain_string(dbpath):
    d = db.Database(dbpath)
    _insert(d, "abcdefghij", HijaStatus.RUNNING)
    assert tuple(d.query("SELECT typeof(status), status FROM spawner_hijas")[0]) == \
        ("text", "running")
    assert json.dumps({"status": HijaStatus.OOM}) == '{"status": "oom"}'
    assert f"{HijaStatus.EXPIRED}" == "expired" and HijaStatus.LOST == "lost"
