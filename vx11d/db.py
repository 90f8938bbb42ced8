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

import errno
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
from .errors import (
    DbBusy,
    DbCorrupt,
    DbError,
    DbFull,
    DbIntegrityError,
    DbIoError,
    DbMissing,
    DbReadOnly,
    DbReplaced,
    DbUnavailable,
)

T = TypeVar("T")
log = logging.getLogger("vx11.db")

SCHEMA_TABLE = "schema_migrations"
# Every cause a Database can report, for metric labels and documentation.
FAULT_CAUSES = ("locked", "read_only", "disk_full", "db_missing", "db_replaced", "corrupt",
                "io_error")
# Below this much free space on the DB's filesystem the disk counts as full: an I/O
# error then is ``disk_full``, and the free-space probe (:func:`low_space`, run by the
# gateway's health task every 2 s and by madre and the reaper each pass) reports
# ``disk_full`` before any write fails; writes are refused until there is more again.
LOW_SPACE_BYTES = 256 * 1024

# SQLite primary result codes (sqlite3.h); an extended code keeps the primary in its low byte.
SQLITE_PERM, SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY = 3, 5, 6, 8
SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN = 10, 11, 13, 14
SQLITE_CONSTRAINT, SQLITE_NOTADB = 19, 26
SQLITE_READONLY_DBMOVED = SQLITE_READONLY | (4 << 8)


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
        # None: create the file only where no DB ever was (no marker, see _marker_path).
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
            err = _os_error(e, self.path)
            self._note(err)
            raise err from e
        except DbUnavailable as e:
            self._note(e)
            raise
        self._bind()
        return conn

    def _create_if_allowed(self) -> None:
        if os.path.exists(self.path):
            _mark_created(self.path)
            return
        allowed = self.create if self.create is not None else \
            not os.path.exists(_marker_path(self.path))
        if not allowed:
            raise DbMissing(f"{self.path} is missing, though a vx11 database existed here: "
                            "restore it from a backup (or a rescued copy beside it), or "
                            "run `vx11ctl db migrate` to start an empty one")
        _create_shared(self.path)
        _mark_created(self.path)

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
            _create_shared(tmp)  # 0660: every daemon can take it once it is put back
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
            elif isinstance(self.fault, DbFull) and _free_bytes(self.path) < LOW_SPACE_BYTES:
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
                if not _is_busy(e) or time.monotonic() > deadline:
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
                if not _is_busy(e) or time.monotonic() > deadline:
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


def classify(e: sqlite3.Error, path: str, deadline: float | None = None) -> DbError:
    """The DbError subclass for a SQLite error, by its result code (never its text)."""
    code = getattr(e, "sqlite_errorcode", None)
    if isinstance(e, sqlite3.IntegrityError) or (code is not None and
                                                 code & 0xFF == SQLITE_CONSTRAINT):
        return DbIntegrityError(f"{path}: {e}")
    if code is None:
        return DbError(f"{path}: {e}")
    primary = code & 0xFF
    d = os.path.dirname(path) or "."
    if primary in (SQLITE_BUSY, SQLITE_LOCKED):
        waited = f" for {deadline:g}s" if deadline else ""
        return DbBusy(f"{path}: still locked by another writer{waited}; retry later "
                      f"(`fuser {path}` shows who holds it)")
    if code == SQLITE_READONLY_DBMOVED:
        return DbMissing(f"{path} was moved or deleted while open; restore it")
    if primary in (SQLITE_READONLY, SQLITE_PERM):
        return _ro_or_full(path, d) or DbReadOnly(
            f"{path}: read-only; make {d} writable (remount rw, or fix ownership: group vx11)")
    if primary == SQLITE_FULL:
        return DbFull(f"{path}: no space left on the filesystem of {d}; free some space")
    if primary == SQLITE_CANTOPEN:
        if not os.path.exists(path):
            return DbMissing(f"{path} is missing; restore it or run `vx11ctl db migrate`")
        return _ro_or_full(path, d) or DbIoError(f"{path}: cannot open: {e}")
    if primary == SQLITE_IOERR:
        return _ro_or_full(path, d) or DbIoError(f"{path}: I/O error ({e}); check the disk")
    if primary in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return DbCorrupt(f"{path}: not a sound database ({e}); put a backup back "
                         "(vx11ctl db restore FILE)")
    return DbError(f"{path}: {e}")


def _ro_or_full(path: str, d: str) -> DbError | None:
    """DbReadOnly or DbFull when the filesystem of ``d`` says so, else None."""
    try:
        vfs = os.statvfs(d)
    except OSError:
        return None
    if vfs.f_flag & os.ST_RDONLY:
        return DbReadOnly(f"{path}: the filesystem of {d} is mounted read-only; remount it "
                          "read-write")
    if not os.access(d, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return DbReadOnly(f"{path}: not writable by this process; fix the ownership or "
                          f"mode of it and of {d} (group vx11, g+w)")
    if vfs.f_bavail * vfs.f_frsize < LOW_SPACE_BYTES:
        return DbFull(f"{path}: no space left on the filesystem of {d}; free some space")
    return None


def stale_read_only_view(path: str, mountinfo: str = "/proc/self/mountinfo") -> bool:
    """True when this process sees the DB's filesystem read-only but the kernel says rw.

    A unit with ProtectSystem=/ReadWritePaths= gets a copy of the host's mounts when it
    starts; if the state filesystem was read-only then, the copy keeps its read-only
    mount flag after the host remounts it read-write (only the superblock flag is
    shared). The fix is a fresh mount namespace, i.e. a new process: the caller exits
    cleanly (a socket-activated gateway is started again by the next connection).
    Where several mounts are stacked on the DB's mount point, the one on top (the one
    no other mount there was mounted on) is the one this process sees.
    """
    d = os.path.dirname(os.path.abspath(path)) or "/"
    best: list[tuple[str, str, list[str], list[str]]] = []  # mounts at the deepest point
    best_len = -1
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, sup = left.split(), right.split()
                if len(fields) < 6 or len(sup) < 3:
                    continue
                point = fields[4].replace("\\040", " ")
                if not (d == point or d.startswith(point.rstrip("/") + "/")):
                    continue
                entry = (fields[0], fields[1], fields[5].split(","), sup[2].split(","))
                if len(point) > best_len:
                    best, best_len = [entry], len(point)
                elif len(point) == best_len:
                    best.append(entry)
    except OSError:
        return False
    # Mounts stacked on one point: the visible one is on top, i.e. no other mount at
    # that point was mounted on it (its id is nobody's parent id there).
    parents = {e[1] for e in best}
    top = [e for e in best if e[0] not in parents] or best[-1:]
    if not top:
        return False
    _, _, per_mount, super_opts = top[-1]
    return "ro" in per_mount and "rw" in super_opts


def low_space(path: str) -> DbFull | None:
    """DbFull when the DB's filesystem has under LOW_SPACE_BYTES free (the free-space
    probe; one statvfs), else None (also when it cannot be asked)."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        vfs = os.statvfs(d)
    except OSError:
        return None
    free = vfs.f_bavail * vfs.f_frsize
    if free >= LOW_SPACE_BYTES:
        return None
    return DbFull(f"{path}: the filesystem of {d} is full ({free // 1024} KiB free, under "
                  f"the {LOW_SPACE_BYTES // 1024} KiB vx11 needs); free some space")


def _free_bytes(path: str) -> int:
    try:
        vfs = os.statvfs(os.path.dirname(path) or ".")
    except OSError:
        return 0
    return vfs.f_bavail * vfs.f_frsize


def _os_error(e: OSError, path: str) -> DbError:
    d = os.path.dirname(path) or "."
    if e.errno == errno.ENOSPC:
        return DbFull(f"{path}: no space left on the filesystem of {d}; free some space")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return DbReadOnly(f"{path}: cannot create it ({e.strerror}); make {d} writable")
    if e.errno == errno.ENOENT:
        return DbMissing(f"{path}: its directory {d} is missing")
    return DbIoError(f"{path}: {e.strerror}")


def existed_here(path: str) -> bool:
    """True when a vx11 database was created at ``path`` before (its marker is there),
    so a missing file is a lost one, which no daemon re-creates."""
    return os.path.exists(_marker_path(path))


def _marker_path(path: str) -> str:
    """A dotfile beside the DB saying a DB was created here (``rm vx11.db*`` spares it)."""
    d, base = os.path.split(path)
    return os.path.join(d, f".{base}.created")


def _mark_created(path: str) -> None:
    marker = _marker_path(path)
    if not os.path.exists(marker):
        with suppress(OSError):
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640))


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


def _is_busy(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)


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
