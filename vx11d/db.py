"""The shared SQLite database: WAL, short BEGIN IMMEDIATE writes, named migrations.

Every daemon opens one :class:`Database` per process (re-opened after a fork). Writes
go through :meth:`Database.write`, which runs a function inside ``BEGIN IMMEDIATE``
and retries the whole function while the file stays locked, up to a deadline: a
caller never sees "database is locked", and because the write lock is taken before
anything is read, a read-modify-write never loses an update.

``synchronous=NORMAL``: in WAL mode a committed transaction survives any process
crash (``kill -9``) with NORMAL; only a power cut can roll back the last commits, and
it still leaves the file consistent. The one irreversible act that depends on a
record (the rotator deleting a source dir) is guarded by an fsynced, verified archive
on disk, not by the DB row, so FULL would buy nothing a crash test can see and would
cost an fsync per commit.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from .errors import DbBusy, DbError, DbIntegrityError

T = TypeVar("T")

SCHEMA_TABLE = "schema_migrations"


class Database:
    """One process's handle on the shared DB file; re-opens itself after a fork."""

    def __init__(self, path: str, *, readonly: bool = False, busy_timeout_ms: int = 5000,
                 write_deadline: float = 30.0, migrate: bool = False):
        self.path = path
        self.readonly = readonly
        self.busy_timeout_ms = busy_timeout_ms
        self.write_deadline = write_deadline
        self._conn: sqlite3.Connection | None = None
        self._pid = -1
        self._lock = threading.RLock()
        if migrate:
            apply_migrations(self)

    @classmethod
    def from_config(cls, cfg: Any, *, readonly: bool = False, migrate: bool = False
                    ) -> Database:
        """A Database for ``cfg.db`` (a :class:`vx11d.config.Config`)."""
        return cls(cfg.db.path, readonly=readonly, busy_timeout_ms=cfg.db.busy_timeout_ms,
                   write_deadline=cfg.db.write_deadline, migrate=migrate)

    @property
    def conn(self) -> sqlite3.Connection:
        """This process's connection, opened on first use."""
        if self._conn is None or self._pid != os.getpid():
            self._conn = self._open()
            self._pid = os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        try:
            if self.readonly:
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                       isolation_level=None, check_same_thread=False,
                                       timeout=self.busy_timeout_ms / 1000)
            else:
                _create_shared(self.path)
                conn = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False,
                                       timeout=self.busy_timeout_ms / 1000)
        except sqlite3.Error as e:
            raise DbError(f"cannot open {self.path}: {e}") from e
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA foreign_keys=ON")
        if not self.readonly:
            # WAL is a property of the file; switching needs no open transaction.
            _retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone(),
                        self.write_deadline)
            conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def close(self) -> None:
        """Close this process's connection (a no-op if none is open)."""
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in one BEGIN IMMEDIATE transaction, retried while locked."""
        if self.readonly:
            raise DbError("write on a read-only database handle")
        deadline = time.monotonic() + self.write_deadline
        delay = 0.001
        with self._lock:
            conn = self.conn
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError as e:
                    if not _is_busy(e) or time.monotonic() > deadline:
                        raise _db_error(e, self.path) from e
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.05)
                    continue
                try:
                    result = fn(conn)
                    conn.execute("COMMIT")
                    return result
                except sqlite3.OperationalError as e:
                    _rollback(conn)
                    if not _is_busy(e) or time.monotonic() > deadline:
                        raise _db_error(e, self.path) from e
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.05)
                except sqlite3.Error as e:
                    _rollback(conn)
                    raise _db_error(e, self.path) from e
                except BaseException:
                    _rollback(conn)
                    raise

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several reads (a deferred transaction)."""
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                _rollback(conn)

    def query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        """All rows of one read-only statement."""
        with self._lock:
            try:
                return _retry_busy(lambda: self.conn.execute(sql, params).fetchall(),
                                   self.write_deadline)
            except sqlite3.Error as e:
                raise _db_error(e, self.path) from e

    def event(self, component: str, event: str, *, subject: str = "",
              **fields: Any) -> int:
        """Append one row to the ``events`` audit trail in its own transaction."""
        return self.write(lambda c: record_event(c, component, event, subject=subject,
                                                 **fields))


def _create_shared(path: str) -> None:
    """Create the DB file mode 0660 (group-writable) if it does not exist yet.

    Every daemon shares the file through group vx11 (the state dir is group vx11), but
    SQLite creates files 0644 minus the umask, which locks out every writer but the
    first. SQLite gives the -wal and -shm files the mode of the DB file, so this one
    chmod covers all three.
    """
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, mode=0o770, exist_ok=True)  # normally tmpfiles/StateDirectory= made it
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o660)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o660)
    finally:
        os.close(fd)


def record_event(conn: sqlite3.Connection, component: str, event: str, *, subject: str = "",
                 **fields: Any) -> int:
    """Append an audit event inside the caller's transaction; returns its id."""
    cur = conn.execute(
        "INSERT INTO events (ts, component, event, subject, data) VALUES (?, ?, ?, ?, ?)",
        (time.time(), component, event, str(subject), json.dumps(fields, sort_keys=True,
                                                                   default=str)))
    return int(cur.lastrowid or 0)


def _is_busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


def _db_error(e: sqlite3.Error, path: str) -> DbError:
    if isinstance(e, sqlite3.OperationalError) and _is_busy(e):
        return DbBusy(f"{path}: still locked after the write deadline")
    if isinstance(e, sqlite3.IntegrityError):
        return DbIntegrityError(f"{path}: {e}")
    return DbError(f"{path}: {e}")


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        with suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _retry_busy(fn: Callable[[], T], deadline_s: float) -> T:
    deadline = time.monotonic() + deadline_s
    delay = 0.001
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as e:
            if not _is_busy(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.05)


# --- migrations ---------------------------------------------------------------------

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
    conn = db.conn
    db.write(lambda c: c.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, "
        "applied_at REAL NOT NULL)"))
    applied: list[str] = []
    # Off while migrating (a table rebuild drops a parent table; PRAGMA foreign_keys is a
    # no-op inside a transaction); each rebuild checks the keys itself before commit.
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
        conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS)}")
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
