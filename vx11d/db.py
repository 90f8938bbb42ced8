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

This module is the handle; the fault classification is in :mod:`vx11d.dbfaults`, the
schema and its migrations in :mod:`vx11d.migrations` (both re-exported here).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any, TypeVar

from . import dbfile
from .dbfaults import (  # noqa: F401  FAULT_CAUSES, existed_here: the public face
    FAULT_CAUSES,
    LOW_SPACE_BYTES,
    classify,
    create_shared,
    existed_here,
    free_bytes,
    is_busy,
    low_space,
    mark_created,
    marker_path,
    os_error,
    stale_read_only_view,
)
from .errors import DbBusy, DbCorrupt, DbError, DbFull, DbMissing, DbReplaced, DbUnavailable
from .migrations import (  # noqa: F401  the public face: vx11d.db.check, .schema_sql, ...
    MIGRATIONS,
    SCHEMA_TABLE,
    TABLE_OWNERS,
    apply_migrations,
    check,
    schema_map,
    schema_sql,
)

T = TypeVar("T")
log = logging.getLogger("vx11.db")


class Database:
    """One process's handle on the shared DB file; re-opens itself after a fork.

    Two connections: writes go through one (serialised by a lock), reads through a
    second, so a write waiting for another process's lock never holds up a read.
    The handle is bound to the file it opened: before each use it checks that the
    path still names that file (device and inode), and if not it refuses every read
    and write (:class:`DbMissing` / :class:`DbReplaced`) instead of writing on into a
    deleted file that nobody else sees. See docs/faults.md.
    """

    def __init__(self, path: str, *, readonly: bool = False, busy_timeout_ms: int = 1000,
                 write_deadline: float = 3.0, migrate: bool = False,
                 create: bool | None = None):
        self.path = path
        self.readonly = readonly
        self.busy_timeout_ms = busy_timeout_ms
        self.write_deadline = write_deadline
        # None: create the file only where no DB ever was (no marker, see marker_path).
        self.create = create
        # How loud this handle logs a host fault and its end (db_degraded, db_recovered,
        # db_file_lost). A daemon whose WriteHealth says it in its own words (madre, the
        # reaper) turns it down to DEBUG, so one fault is one journal line.
        self.fault_log_level = logging.WARNING
        self._conn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._pid = self._rpid = -1
        self._lock = threading.RLock()
        self._rlock = threading.RLock()
        self._state = threading.Lock()
        self._ident: tuple[int, int] | None = None
        self._lost: DbUnavailable | None = None
        self._rescued: str | None = None
        self._rejected: tuple[int, int, int] | None = None  # an unsound file, as seen
        self.fault: DbUnavailable | None = None
        self.fault_since: float | None = None  # wall clock, for "since 12s"
        self.migrated = False
        if migrate:
            apply_migrations(self)

    @classmethod
    def from_config(cls, cfg: Any, *, readonly: bool = False, migrate: bool = False,
                    create: bool | None = None) -> Database:
        """A Database for ``cfg.db`` (a :class:`vx11d.config.Config`)."""
        return cls(cfg.db.path, readonly=readonly, busy_timeout_ms=cfg.db.busy_timeout_ms,
                   write_deadline=cfg.db.write_deadline, migrate=migrate, create=create)

    # --- connections ---------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        """This process's write connection, opened on first use (hold ``_lock``)."""
        self._check_file()
        if self._conn is None or self._pid != os.getpid():
            self._conn = self._open(writer=not self.readonly)
            self._pid = os.getpid()
        return self._conn

    @property
    def rconn(self) -> sqlite3.Connection:
        """This process's read connection (hold ``_rlock``)."""
        if self.readonly:
            return self.conn
        self._check_file()
        if self._rconn is None or self._rpid != os.getpid():
            self.conn  # noqa: B018  the writer creates the file and switches it to WAL
            self._rconn = self._open(writer=False)
            self._rpid = os.getpid()
        return self._rconn

    def _open(self, writer: bool) -> sqlite3.Connection:
        try:
            if not writer and self.readonly:
                # a reader alone (vx11ctl): also a WAL DB it may not create the -shm of
                conn = dbfile.open_read_only(self.path, timeout=self.busy_timeout_ms / 1000)
            elif not writer:
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True,
                                       isolation_level=None, check_same_thread=False,
                                       timeout=self.busy_timeout_ms / 1000)
            else:
                self._create_if_allowed()
                if self._ident is None and dbfile.SIDECAR_REGISTRY.stale(self.path):
                    with dbfile.dir_lock(self.path):  # another handle here lost a file
                        self._set_aside_stale()
                conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True,
                                       isolation_level=None, check_same_thread=False,
                                       timeout=self.busy_timeout_ms / 1000)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA foreign_keys=ON")
            if writer:
                # WAL is a property of the file; switching needs no open transaction.
                _retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL").fetchone(),
                            self.write_deadline)
            else:
                conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as e:
            err = classify(e, self.path)
            self._note(err)
            raise err from e
        except OSError as e:
            err = os_error(e, self.path)
            self._note(err)
            raise err from e
        except DbUnavailable as e:
            self._note(e)
            raise
        self._bind()
        return conn

    def _create_if_allowed(self) -> None:
        if os.path.exists(self.path):
            mark_created(self.path)
            return
        allowed = self.create if self.create is not None else \
            not os.path.exists(marker_path(self.path))
        if not allowed:
            raise DbMissing(f"{self.path} is missing, though a vx11 database existed here: "
                            "restore it from a backup (or a rescued copy beside it), or "
                            "run `vx11ctl db migrate` to start an empty one")
        create_shared(self.path)
        mark_created(self.path)

    def _bind(self) -> None:
        """Remember which file the path names now (the file our connections hold)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return
        with self._state:
            if self._ident is None:
                self._ident = (st.st_dev, st.st_ino)
            bound = self._ident == (st.st_dev, st.st_ino)
        if bound:  # which -wal/-shm belong to this file: known only while held open
            dbfile.SIDECAR_REGISTRY.remember(self.path, (st.st_dev, st.st_ino))

    def close(self) -> None:
        """Close this process's connections (a no-op if none is open).

        Waits for a read or write in progress in another thread (bounded by its
        deadline); the next use opens them again.
        """
        for attr, pid, lock in (("_conn", self._pid, self._lock),
                                ("_rconn", self._rpid, self._rlock)):
            with lock:
                c = getattr(self, attr)
                if c is not None and pid == os.getpid():
                    with suppress(sqlite3.Error):
                        c.close()
                setattr(self, attr, None)

    # --- is the path still our file? ----------------------------------------------

    def _check_file(self) -> None:
        """Raise DbMissing/DbReplaced when the path no longer names the file we opened."""
        if self._lost is not None:
            self._try_adopt()
            if self._lost is not None:
                raise self._lost
        if self._ident is None:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._lose(DbMissing(
                f"{self.path} was deleted while open: writes are refused so nothing goes "
                "into a file nobody else sees; restore it (a rescued copy may be beside "
                "it) or run `vx11ctl db migrate` to start an empty one"))
            return
        except OSError:
            return  # a stat error is not proof of anything; the next use will tell
        if (st.st_dev, st.st_ino) != self._ident:
            self._lose(DbReplaced(
                f"{self.path} was replaced by another file while open: writes are refused "
                "until it holds a vx11 database (restored backup or `vx11ctl db migrate`)"))

    def _lose(self, err: DbUnavailable) -> None:
        with self._state:
            if self._lost is not None:
                raise self._lost
            self._lost = err
        log.log(logging.ERROR if self.fault_log_level >= logging.WARNING
                else self.fault_log_level, "%s", err,
                extra={"VX11_EVENT": "db_file_lost", "VX11_CAUSE": err.cause})
        if self._ident is not None:  # the lost file's WAL may still be at the path
            dbfile.SIDECAR_REGISTRY.pin(self.path, self._ident)
        self._note(err)
        self._rescue(blocking=False)  # a reader never waits for the writer's lock here
        raise err

    def _rescue(self, blocking: bool) -> str:
        """Copy the content of the lost file (still open here) beside the path, once.

        Every process that had the file open holds the same content, so the first one
        to get here writes ``<path>.rescued-<inode>``; the others find it there.
        """
        if self._rescued is not None:
            return self._rescued
        if not self._lock.acquire(blocking=blocking,
                                  timeout=self._wait_s() if blocking else -1):
            return ""
        try:
            if self._rescued is None:
                self._rescued, wrote = self._rescue_locked()
                if self._rescued and self._lost is not None:
                    self._lost.args = (f"{self._lost.args[0]}; its last content was saved "
                                       f"to {self._rescued}",)
                if wrote:  # the others found it there: theirs is not news
                    log.warning("saved the lost database's content to %s", self._rescued,
                                extra={"VX11_EVENT": "db_rescued"})
                elif self._rescued:
                    log.debug("the lost database's content is already saved at %s",
                              self._rescued)
            return self._rescued
        finally:
            self._lock.release()

    def _rescue_locked(self) -> tuple[str, bool]:
        """(the rescued copy's path or "", whether this process wrote it)."""
        conn = self._conn if self._pid == os.getpid() else None
        if conn is None or self._ident is None:
            return "", False
        dest = f"{self.path}.rescued-{self._ident[1]}"
        if os.path.exists(dest):
            return dest, False
        tmp = f"{dest}.tmp-{os.getpid()}"
        try:
            create_shared(tmp)  # 0660: every daemon can take it once it is put back
            out = sqlite3.connect(tmp)
            try:
                conn.backup(out)
            finally:
                out.close()
            try:
                os.link(tmp, dest)  # not replace: of several daemons, one puts it there
            except FileExistsError:
                return dest, False
        except (sqlite3.Error, OSError) as e:
            log.error("could not save the lost database's content to %s: %s", dest, e,
                      extra={"VX11_EVENT": "db_rescue_failed"})
            return "", False
        finally:
            with suppress(OSError):
                os.unlink(tmp)
        return dest, True

    def _try_adopt(self) -> None:
        """Take the file now at the path once it holds a sound vx11 database.

        Under the directory lock (see vx11d/dbfile.py): first the ``-wal``/``-shm`` this
        process's connections held for the lost file, if still at the path, are moved
        aside (SQLite would apply them to the new file), then the file gets a
        ``quick_check``. A file without the vx11
        schema is not taken (an empty file, a copy in progress); an unsound one is a
        ``corrupt`` fault until another file is put there.
        """
        try:
            st = os.stat(self.path)
        except OSError:
            return
        seen = (st.st_dev, st.st_ino, st.st_mtime_ns ^ st.st_size)
        if seen == self._rejected:
            return
        with dbfile.dir_lock(self.path) as locked:
            if not locked:
                return
            moved = self._set_aside_stale()
            bad = dbfile.problems(self.path, quick=True)
        if moved:
            log.warning("moved the write-ahead log of the lost database aside (%s): it "
                        "belongs to the old file and would corrupt the new one",
                        ", ".join(moved), extra={"VX11_EVENT": "db_stale_wal_moved"})
        if bad and bad[0].startswith("not a vx11 database"):
            return
        if bad:
            self._rejected = seen
            err = DbCorrupt(f"{self.path}: the file put there is not sound ({bad[0]}); "
                            "writes are refused: put back a sound backup with "
                            "`vx11ctl db restore FILE`")
            with self._state:
                self._lost = err
            log.error("%s", err, extra={"VX11_EVENT": "db_file_rejected",
                                        "VX11_CAUSE": err.cause})
            self._note(err)
            return
        with self._state:
            old = self._ident
            self._ident = (st.st_dev, st.st_ino)
            self._lost = None
            self._rescued = None
            self._rejected = None
            self._conn = self._rconn = None  # the old ones hold the lost file
        log.warning("%s now holds a database again (inode %s, was %s): using it",
                    self.path, st.st_ino, old[1] if old else "?",
                    extra={"VX11_EVENT": "db_file_adopted"})

    def _set_aside_stale(self) -> list[str]:
        """Move aside the -wal/-shm of a lost file still at the path (hold the dir lock)."""
        reg = dbfile.SIDECAR_REGISTRY
        moved = dbfile.set_aside_stale(self.path, reg.stale(self.path), None)
        reg.release(self.path)
        return moved

    # --- fault state ----------------------------------------------------------------

    def _note(self, err: DbError) -> None:
        """Record a host fault (the first of a run is logged; reported by :meth:`health`)."""
        if not isinstance(err, DbUnavailable):
            return
        with self._state:
            changed = self.fault is None or self.fault.cause != err.cause
            self.fault = err
            if self.fault_since is None:
                self.fault_since = time.time()
        if changed and not isinstance(err, DbMissing):  # lost files log in _lose
            log.log(self.fault_log_level, "database degraded (%s): %s", err.cause, err,
                    extra={"VX11_EVENT": "db_degraded", "VX11_CAUSE": err.cause})

    def _ok(self) -> None:
        """A write went through: any fault is over."""
        if self.fault is None:
            return
        with self._state:
            old, since = self.fault, self.fault_since
            self.fault = self.fault_since = None
        if old is not None:
            took = f" after {time.time() - since:.0f}s" if since else ""
            log.log(min(self.fault_log_level, logging.INFO),
                    "database writable again (was %s%s)", old.cause, took,
                    extra={"VX11_EVENT": "db_recovered", "VX11_CAUSE": old.cause})

    def health(self) -> tuple[str, str, str]:
        """``("ok", "", "")`` or ``("degraded", cause, message)`` from what was last seen."""
        f = self._lost or self.fault
        if f is None:
            return ("ok", "", "")
        return ("degraded", f.cause, str(f))

    def probe(self) -> DbUnavailable | None:
        """Check the file is still ours and, while degraded, whether writes work again.

        Blocking (up to the write deadline): call it from a worker thread or a tick.
        Applies pending migrations first when this handle was asked for them.
        """
        if self._lost is not None:
            self._rescue(blocking=True)
        try:
            self._check_file()
            if not self.readonly:
                self._check_space()
            if self.readonly:
                self.query("SELECT 1")
            elif not self.migrated and self._wants_migrations:
                apply_migrations(self)
            elif isinstance(self.fault, DbFull) and free_bytes(self.path) < LOW_SPACE_BYTES:
                return self.fault  # a tiny write may fit in the WAL; a real one would not
            elif self.fault is not None or self._conn is None:
                self.write(lambda c: c.execute(
                    f"PRAGMA user_version={int(c.execute('PRAGMA user_version').fetchone()[0])}"),
                    proves=True)
        except DbUnavailable as e:
            return e
        return None

    _wants_migrations = False

    def _check_space(self) -> None:
        """Raise (and record) DbFull while the filesystem has under LOW_SPACE_BYTES free:
        a full disk is reported before a write fails on it, not after."""
        full = low_space(self.path)
        if full is not None:
            self._note(full)
            raise full

    def migrate_on_probe(self) -> None:
        """Apply pending migrations at the next successful :meth:`probe` (no I/O now)."""
        self._wants_migrations = True

    def start(self) -> DbUnavailable | None:
        """For a daemon that must run while the DB is unwell: migrate now or on a later probe."""
        self.migrate_on_probe()
        return self.probe()

    # --- reads and writes --------------------------------------------------------

    def write(self, fn: Callable[[sqlite3.Connection], T], *, proves: bool = False) -> T:
        """Run ``fn(conn)`` in one BEGIN IMMEDIATE transaction, retried while locked.

        A commit that changed rows ends a recorded fault (``proves``: count it even if
        no row changed, for a probe that writes a header field); a transaction that
        wrote nothing proves nothing, since SQLite commits it on a read-only file too.
        """
        if self.readonly:
            raise DbError("write on a read-only database handle")
        if isinstance(self.fault, DbFull):
            self._check_space()  # still full: refused before it fails half-way
        deadline = time.monotonic() + self.write_deadline
        delay = 0.001
        if not self._lock.acquire(timeout=self._wait_s()):
            err = DbBusy(f"{self.path}: this process's earlier writes still wait for the "
                         f"lock after {self._wait_s():g}s; retry later")
            self._note(err)
            raise err
        try:
            return self._write_locked(fn, deadline, delay, proves)
        finally:
            self._lock.release()

    def _wait_s(self) -> float:
        """The longest one write may wait for locks: busy_timeout + write_deadline."""
        return self.busy_timeout_ms / 1000 + self.write_deadline

    def _write_locked(self, fn: Callable[[sqlite3.Connection], T], deadline: float,
                      delay: float, proves: bool) -> T:
        conn = self.conn
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                if not is_busy(e) or time.monotonic() > deadline:
                    raise self._fail(e) from e
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.05)
                continue
            try:
                before = conn.total_changes
                result = fn(conn)
                conn.execute("COMMIT")
                proves = proves or conn.total_changes != before
            except sqlite3.OperationalError as e:
                _rollback(conn)
                if not is_busy(e) or time.monotonic() > deadline:
                    raise self._fail(e) from e
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.05)
                continue
            except sqlite3.Error as e:
                _rollback(conn)
                raise self._fail(e) from e
            except BaseException:
                _rollback(conn)
                raise
            if proves:
                self._ok()
            return result

    def _fail(self, e: sqlite3.Error) -> DbError:
        err = classify(e, self.path, self.write_deadline)
        self._note(err)
        return err

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several reads (a deferred transaction)."""
        with self._rlock:
            conn = self.rconn
            try:
                conn.execute("BEGIN")
            except sqlite3.Error as e:
                raise self._fail(e) from e
            try:
                yield conn
            finally:
                _rollback(conn)

    def query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        """All rows of one read-only statement."""
        with self._rlock:
            try:
                return _retry_busy(lambda: self.rconn.execute(sql, params).fetchall(),
                                   self.write_deadline)
            except sqlite3.Error as e:
                raise self._fail(e) from e

    def event(self, component: str, event: str, *, subject: str = "",
              **fields: Any) -> int:
        """Append one row to the ``events`` audit trail in its own transaction."""
        return self.write(lambda c: record_event(c, component, event, subject=subject,
                                                 **fields))


def record_event(conn: sqlite3.Connection, component: str, event: str, *, subject: str = "",
                 **fields: Any) -> int:
    """Append an audit event inside the caller's transaction; returns its id."""
    cur = conn.execute(
        "INSERT INTO events (ts, component, event, subject, data) VALUES (?, ?, ?, ?, ?)",
        (time.time(), component, event, str(subject), json.dumps(fields, sort_keys=True,
                                                                   default=str)))
    return int(cur.lastrowid or 0)


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
            if not is_busy(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.05)
