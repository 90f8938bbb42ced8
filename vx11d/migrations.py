"""The schema of the shared database: named migrations, each applied once in one
transaction together with its row in ``schema_migrations``; the health check, the
schema as SQL and which daemon owns which table (``vx11ctl db check|schema``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .db import Database

SCHEMA_TABLE = "schema_migrations"

Migration = Callable[[sqlite3.Connection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    """Register a named migration; they apply in definition order, each exactly once."""
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_initial(conn: sqlite3.Connection) -> None:
    """Schema v1: the hija registry, the audit trail, activations, rotations, reaper actions."""
    for stmt in _V1:
        conn.execute(stmt)


_V1 = [
    """CREATE TABLE spawner_hijas (
        id TEXT PRIMARY KEY,
        template TEXT NOT NULL,
        args TEXT NOT NULL DEFAULT '{}',
        ttl_s REAL NOT NULL CHECK (ttl_s > 0),
        port INTEGER,
        unit TEXT NOT NULL UNIQUE,
        main_pid INTEGER,
        status TEXT NOT NULL DEFAULT 'requested' CHECK (status IN
            ('requested','starting','running','expired','exited','failed','stopped','lost')),
        created_at REAL NOT NULL,
        started_at REAL,
        expires_at REAL,
        ended_at REAL,
        exit_status INTEGER,
        result TEXT,
        reason TEXT
    )""",
    # A port is held only by a live hija: the partial unique index makes a double
    # allocation impossible even if two writers race.
    """CREATE UNIQUE INDEX spawner_hijas_live_port ON spawner_hijas(port)
        WHERE port IS NOT NULL AND status IN ('requested','starting','running')""",
    "CREATE INDEX spawner_hijas_status ON spawner_hijas(status)",
    """CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        component TEXT NOT NULL,
        event TEXT NOT NULL,
        subject TEXT NOT NULL DEFAULT '',
        data TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX events_subject ON events(subject)",
    "CREATE INDEX events_event ON events(event, ts)",
    """CREATE TRIGGER events_no_update BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'events is append-only'); END""",
    """CREATE TRIGGER events_no_delete BEFORE DELETE ON events
        BEGIN SELECT RAISE(ABORT, 'events is append-only'); END""",
    """CREATE TABLE activations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        component TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL CHECK (expires_at > created_at),
        ended_at REAL,
        ended_reason TEXT,
        requested_by TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX activations_live ON activations(component) WHERE ended_at IS NULL",
    """CREATE TABLE rotations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        started_at REAL NOT NULL,
        finished_at REAL,
        dry_run INTEGER NOT NULL DEFAULT 0,
        aggressive INTEGER NOT NULL DEFAULT 0,
        active_dirs INTEGER NOT NULL DEFAULT 0,
        archived INTEGER NOT NULL DEFAULT 0,
        deleted_archives INTEGER NOT NULL DEFAULT 0,
        archive_count INTEGER NOT NULL DEFAULT 0,
        bytes_in INTEGER NOT NULL DEFAULT 0,
        bytes_out INTEGER NOT NULL DEFAULT 0,
        total_bytes INTEGER NOT NULL DEFAULT 0,
        errors INTEGER NOT NULL DEFAULT 0,
        report TEXT NOT NULL DEFAULT '{}'
    )""",
    """CREATE TABLE reaper_actions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        pid INTEGER NOT NULL,
        start_time REAL,
        comm TEXT NOT NULL DEFAULT '',
        rule TEXT NOT NULL,
        action TEXT NOT NULL,
        signal TEXT,
        outcome TEXT NOT NULL,
        hija_id TEXT REFERENCES spawner_hijas(id),
        detail TEXT NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX reaper_actions_ts ON reaper_actions(ts)",
]

@migration
def m002_madre_stop_request(conn: sqlite3.Connection) -> None:
    """A stop request on a hija (DELETE /vx11/hijas/{id}, vx11ctl hijas stop) for madre."""
    conn.execute("ALTER TABLE spawner_hijas ADD COLUMN stop_requested_at REAL")


@migration
def m003_hija_oom_end_and_memory(conn: sqlite3.Connection) -> None:
    """The ``oom`` end status (killed by the kernel for memory) and the memory a hija was
    allowed (``memory_max``) and used at most (``memory_peak``), in bytes.

    SQLite cannot change a CHECK constraint in place: the table is rebuilt (the old one
    renamed aside without touching the references to it, legacy_alter_table; the new
    one created under the real name, filled, the old one dropped, the indexes made
    again), with foreign keys off around the migrations (see apply_migrations) and
    checked before commit."""
    cols = [r[1] for r in conn.execute("PRAGMA table_info(spawner_hijas)")]
    conn.execute("PRAGMA legacy_alter_table=ON")
    try:
        conn.execute("ALTER TABLE spawner_hijas RENAME TO spawner_hijas_v2")
    finally:
        conn.execute("PRAGMA legacy_alter_table=OFF")
    conn.execute(_HIJAS_V3)
    keep = ", ".join(cols)
    conn.execute(f"INSERT INTO spawner_hijas ({keep}) SELECT {keep} FROM spawner_hijas_v2")  # noqa: S608
    conn.execute("DROP TABLE spawner_hijas_v2")
    conn.execute(_V1[1])  # spawner_hijas_live_port
    conn.execute(_V1[2])  # spawner_hijas_status
    bad = conn.execute("PRAGMA foreign_key_check").fetchall()
    if bad:
        raise sqlite3.IntegrityError(f"{len(bad)} foreign key violation(s) after rebuilding "
                                     "spawner_hijas")


_HIJAS_V3 = """CREATE TABLE spawner_hijas (
        id TEXT PRIMARY KEY,
        template TEXT NOT NULL,
        args TEXT NOT NULL DEFAULT '{}',
        ttl_s REAL NOT NULL CHECK (ttl_s > 0),
        port INTEGER,
        unit TEXT NOT NULL UNIQUE,
        main_pid INTEGER,
        status TEXT NOT NULL DEFAULT 'requested' CHECK (status IN
            ('requested','starting','running','expired','exited','failed','stopped','lost',
             'oom')),
        created_at REAL NOT NULL,
        started_at REAL,
        expires_at REAL,
        ended_at REAL,
        exit_status INTEGER,
        result TEXT,
        reason TEXT,
        stop_requested_at REAL,
        memory_max INTEGER,
        memory_peak INTEGER
    )"""


@migration
def m004_requested_by(conn: sqlite3.Connection) -> None:
    """Who asked: the credential name (or ``vx11ctl``) that requested each spawn
    (``requested_by``) and stop (``stop_requested_by``) of a hija, and that ended an
    activation window (``ended_by``). Rows from before stay NULL: nobody recorded."""
    conn.execute("ALTER TABLE spawner_hijas ADD COLUMN requested_by TEXT")
    conn.execute("ALTER TABLE spawner_hijas ADD COLUMN stop_requested_by TEXT")
    conn.execute("ALTER TABLE activations ADD COLUMN ended_by TEXT")


@migration
def m005_hijas_template_ended_index(conn: sqlite3.Connection) -> None:
    """An index on (template, ended_at): the failed-streak gauge (madre/streaks.py) reads
    each template's last ends every scrape; without it that is a scan of every hija row."""
    conn.execute("CREATE INDEX IF NOT EXISTS spawner_hijas_template_ended ON "
                 "spawner_hijas(template, ended_at)")


# Which daemon writes which table (DB_MAP).
TABLE_OWNERS = {
    "spawner_hijas": ("madre", "rows requested by the gateway and vx11ctl; every later "
                      "transition by madre"),
    "events": ("all", "append-only audit trail; every daemon appends, nobody updates"),
    "activations": ("madre", "windows written by the gateway and vx11ctl; ended by madre"),
    "rotations": ("rotate", "one row per rotator run"),
    "reaper_actions": ("reaper", "every reaper finding and signal"),
    SCHEMA_TABLE: ("all", "applied migrations; written only by the migration runner"),
}


def apply_migrations(db: Database) -> list[str]:
    """Apply the migrations not yet recorded; each in one transaction with its record."""
    with db._lock:  # foreign keys are off on the write connection meanwhile: no other write
        db.write(lambda c: c.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, "
            "applied_at REAL NOT NULL)"))
        conn = db.conn
        applied: list[str] = []
        # Off while migrating (a table rebuild drops a parent table; PRAGMA foreign_keys is
        # a no-op inside a transaction); each rebuild checks the keys itself before commit.
        conn.execute("PRAGMA foreign_keys=OFF")
        try:
            for name, fn in MIGRATIONS:

                def step(c: sqlite3.Connection, name: str = name, fn: Migration = fn) -> bool:
                    if c.execute("SELECT 1 FROM schema_migrations WHERE name = ?",
                                 (name,)).fetchone():
                        return False
                    fn(c)
                    c.execute("INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)",
                              (name, time.time()))
                    return True

                if db.write(step):
                    applied.append(name)
        finally:
            with suppress(sqlite3.Error):
                conn.execute("PRAGMA foreign_keys=ON")
        db.write(lambda c: c.execute(f"PRAGMA user_version={len(MIGRATIONS)}"), proves=True)
        db.migrated = True
    return applied


def check(db: Database) -> list[str]:
    """Problems found by integrity_check and foreign_key_check (empty: healthy)."""
    problems: list[str] = []
    rows = db.query("PRAGMA integrity_check")
    for r in rows:
        if r[0] != "ok":
            problems.append(f"integrity: {r[0]}")
    for r in db.query("PRAGMA foreign_key_check"):
        problems.append(f"foreign key: table {r[0]} rowid {r[1]} -> {r[2]}")
    names = {r[0] for r in db.query("SELECT name FROM schema_migrations")} \
        if db.query("SELECT 1 FROM sqlite_master WHERE name = ?", (SCHEMA_TABLE,)) else set()
    missing = [n for n, _ in MIGRATIONS if n not in names]
    if missing:
        problems.append(f"migrations not applied: {', '.join(missing)}")
    return problems


def schema_sql(db: Database) -> str:
    """The schema as SQL (tables, indexes, triggers), in a stable order."""
    rows = db.query("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                    "AND name NOT LIKE 'sqlite_%' ORDER BY CASE type WHEN 'table' THEN 0 "
                    "WHEN 'index' THEN 1 ELSE 2 END, name")
    return "".join(f"{r['sql']};\n\n" for r in rows)


def schema_map() -> str:
    """DB_MAP: which daemon owns which table, one line each."""
    lines = ["# table\towner\tnotes"]
    for table, (owner, note) in sorted(TABLE_OWNERS.items()):
        lines.append(f"{table}\t{owner}\t{note}")
    return "\n".join(lines) + "\n"
