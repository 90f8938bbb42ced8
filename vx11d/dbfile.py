"""The shared DB as a file: is it sound, whose WAL lies beside it, a verified copy of it,
an atomic install of one.

SQLite finds a database's write-ahead log by name (``<db>-wal``, with its index
``<db>-shm``) and trusts it: nothing in a WAL says which database file it belongs to.
So a WAL left at the path by a file that was deleted or replaced (still held open by a
running daemon) is applied to whatever file is put at the path next, and corrupts it.
The rules here:

- a daemon remembers which ``-wal``/``-shm`` inodes its connections held for which DB
  file (:class:`SidecarRegistry`, from ``/proc/self/fd``); when it finds its file lost
  it holds those still at the path open (so their inodes cannot be reused); before it
  opens the file now at the path it moves them aside (:func:`set_aside_stale`, to
  ``<db>-wal.stale-<inode>``, never deleted), unless the file at the path is the very
  file they belong to (moved back);
- it checks the new file is sound (:func:`problems`) before writing to it;
- both happen under :func:`dir_lock` (``flock`` on the DB's directory), which
  ``vx11ctl db restore`` takes too, so two daemons never race on the same sidecar.

A backup is a self-contained file (rollback journal mode, no ``-wal`` of its own),
written by SQLite's backup API from a read transaction (a consistent snapshot of a live
DB), checked with ``integrity_check``, fsynced and renamed into place.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import quote

SCHEMA_TABLE = "schema_migrations"
SIDECARS = ("-wal", "-shm")
REPLACED = ".replaced-"  # <db>.replaced-<time>: a DB a restore replaced, kept
STALE = ".stale-"  # <db>-wal.stale-<id>: a sidecar set aside, kept
LOCK_WAIT_S = 2.0

Ident = tuple[int, int]


def identity(path: str) -> Ident | None:
    """(st_dev, st_ino) of ``path``; None when nothing is there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def uri(path: str, **params: str) -> str:
    """An SQLite URI for ``path`` (quoted: a ``?`` or ``#`` in a name is no parameter)."""
    q = "&".join(f"{k}={v}" for k, v in params.items())
    return f"file:{quote(os.path.abspath(path))}" + (f"?{q}" if q else "")


def open_read_only(path: str, timeout: float = 1.0) -> sqlite3.Connection:
    """A read-only connection that has read the schema (so a non-database fails here).

    A WAL database on a read-only filesystem without its ``-shm`` cannot be opened by
    ``mode=ro`` (SQLite must create the index); when no ``-wal`` lies beside it either,
    every committed page is in the file itself and ``immutable=1`` reads it safely.
    """
    conn = sqlite3.connect(uri(path, mode="ro"), uri=True, isolation_level=None,
                           check_same_thread=False, timeout=timeout)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.OperationalError:
        conn.close()
        if not os.path.exists(path) or os.path.exists(path + "-wal") or \
                os.path.exists(path + "-shm"):
            raise
    conn = sqlite3.connect(uri(path, mode="ro", immutable="1"), uri=True,
                           isolation_level=None, check_same_thread=False, timeout=timeout)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def problems(path: str, *, quick: bool = False, known: list[str] | None = None) -> list[str]:
    """What makes the file at ``path`` unfit to serve as the vx11 DB (empty: sound).

    ``quick``: ``PRAGMA quick_check`` (what a daemon runs on adopting a file) instead of
    ``integrity_check`` and ``foreign_key_check``. ``known``: the migration names this
    version knows; a file with others comes from a newer vx11d.
    """
    try:
        conn = open_read_only(path)
    except sqlite3.Error as e:
        return [f"cannot be read as a database ({e})"]
    try:
        return _check(conn, quick, known)
    except sqlite3.Error as e:
        return [f"not a sound database ({e})"]
    finally:
        conn.close()


def _check(conn: sqlite3.Connection, quick: bool, known: list[str] | None) -> list[str]:
    rows = conn.execute("PRAGMA quick_check" if quick else "PRAGMA integrity_check").fetchall()
    out = [f"integrity: {line.strip()}" for r in rows if r[0] != "ok"
           for line in str(r[0]).splitlines() if line.strip()]
    if out:
        return out[:5] + ([f"... and {len(out) - 5} more"] if len(out) > 5 else [])
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                    (SCHEMA_TABLE,)).fetchone() is None:
        return ["not a vx11 database (it has no schema_migrations table)"]
    if not quick:
        for r in conn.execute("PRAGMA foreign_key_check").fetchall():
            out.append(f"foreign key: table {r[0]} rowid {r[1]} -> {r[2]}")
    if known is not None:
        newer = [r[0] for r in conn.execute(f"SELECT name FROM {SCHEMA_TABLE}")  # noqa: S608
                 if r[0] not in known]
        if newer:
            out.append(f"made by a newer vx11d (migrations {', '.join(newer)} unknown here)")
    return out


# --- stale sidecars -----------------------------------------------------------------

def held_sidecars(path: str, fd_dir: str = "/proc/self/fd") -> set[Ident]:
    """Inodes of the ``-wal``/``-shm`` of ``path`` this process holds open (its own
    connections' files, deleted or not)."""
    names = {os.path.abspath(path) + s for s in SIDECARS}
    out: set[Ident] = set()
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return out
    for fd in fds:
        link = os.path.join(fd_dir, fd)
        try:
            target = os.readlink(link).removesuffix(" (deleted)")
            if target in names:
                st = os.stat(link)
                out.add((st.st_dev, st.st_ino))
        except OSError:
            continue
    return out


class SidecarRegistry:
    """What this process knows of which ``-wal``/``-shm`` inode belongs to which DB file.

    Shared by every handle of the process (madre and the reaper have two each), so a
    handle that adopts a new file never takes another handle's live WAL for a stale one:

    - :meth:`remember`, when a handle opens the file: the sidecars this process holds
      now belong to it (unless already pinned as another file's);
    - :meth:`pin`, when a handle finds its file lost: the sidecars still at the path
      that belong to the lost file are held open here, so their inodes cannot be reused
      by a new file's WAL while they are remembered as stale;
    - :meth:`stale`: pinned sidecars of a file other than the one at the path now;
    - :meth:`release`: close the pins of sidecars no longer at the path.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: dict[str, dict[Ident, Ident]] = {}
        self._pins: dict[str, dict[Ident, int]] = {}

    def remember(self, path: str, owner: Ident) -> None:
        held = held_sidecars(path)
        key = os.path.abspath(path)
        with self._lock:
            known, pins = self._owner.setdefault(key, {}), self._pins.get(key, {})
            for side in held:
                if side not in pins:
                    known[side] = owner

    def pin(self, path: str, owner: Ident) -> None:
        key = os.path.abspath(path)
        for s in SIDECARS:
            try:
                fd = os.open(path + s, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                continue
            st = os.fstat(fd)
            side = (st.st_dev, st.st_ino)
            with self._lock:
                pins = self._pins.setdefault(key, {})
                if self._owner.get(key, {}).get(side) == owner and side not in pins:
                    pins[side] = fd
                    continue
            os.close(fd)

    def stale(self, path: str) -> set[Ident]:
        key, now = os.path.abspath(path), identity(path)
        with self._lock:
            owners = self._owner.get(key, {})
            return {side for side in self._pins.get(key, {}) if owners.get(side) != now}

    def release(self, path: str) -> None:
        key = os.path.abspath(path)
        here = {identity(path + s) for s in SIDECARS}
        with self._lock:
            pins = self._pins.get(key, {})
            for side in [x for x in pins if x not in here]:
                os.close(pins.pop(side))
                self._owner.get(key, {}).pop(side, None)


SIDECAR_REGISTRY = SidecarRegistry()


def set_aside_stale(path: str, stale: set[Ident], owner: Ident | None) -> list[str]:
    """Move the ``-wal``/``-shm`` now beside ``path`` aside if their inode is in
    ``stale`` (files that belonged to ``owner``, the DB file this process had open),
    unless the file at ``path`` is ``owner`` itself. Returns the new names.

    Call it under :func:`dir_lock`. Nothing is deleted: ``<db>-wal.stale-<inode>``.
    """
    if not stale or (owner is not None and identity(path) == owner):
        return []
    moved = []
    for s in SIDECARS:
        side = path + s
        got = identity(side)
        if got is None or got not in stale:
            continue
        dest = f"{side}{STALE}{got[1]}"
        try:
            os.rename(side, dest)
        except FileNotFoundError:
            continue
        moved.append(dest)
    if moved:
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    return moved


def kept_beside(path: str) -> list[dict[str, Any]]:
    """What restores and adoptions kept beside the DB and nothing deletes, oldest first:
    each ``<db>.replaced-<time>`` with its own ``-wal``/``-shm`` as one entry, each
    ``<db>-{wal,shm}.stale-<id>`` as one; ``{path, replaced, files, bytes, mtime}``."""
    d, base = os.path.split(os.path.abspath(path))
    try:
        names = sorted(os.listdir(d))
    except OSError:
        return []
    kept: dict[str, dict[str, Any]] = {}
    for n in names:
        replaced = n.startswith(base + REPLACED)
        if not (replaced or n.startswith(tuple(f"{base}{s}{STALE}" for s in SIDECARS))):
            continue
        try:
            st = os.lstat(os.path.join(d, n))
        except OSError:
            continue
        key = os.path.join(d, n.removesuffix("-wal").removesuffix("-shm") if replaced else n)
        k = kept.setdefault(key, {"path": key, "replaced": replaced, "files": [], "bytes": 0,
                                  "mtime": st.st_mtime})
        k["files"].append(os.path.join(d, n))
        k["bytes"] += st.st_size
        k["mtime"] = min(k["mtime"], st.st_mtime)
    return sorted(kept.values(), key=lambda k: (k["mtime"], k["path"]))


@contextmanager
def dir_lock(path: str, wait: float = LOCK_WAIT_S) -> Iterator[bool]:
    """``flock`` on the DB's directory: yields True when held, False when another
    process kept it past ``wait`` (or the directory cannot be opened)."""
    d = os.path.dirname(os.path.abspath(path))
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        yield False
        return
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES) or time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(0.02)
        yield True
    finally:
        os.close(fd)  # releases the lock


# --- copies -------------------------------------------------------------------------

def fsync_dir(d: str) -> None:
    with suppress(OSError):
        fd = os.open(d or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_beside(dest: str, tag: str) -> str:
    d, base = os.path.split(os.path.abspath(dest))
    return os.path.join(d, f".{base}.{tag}-{os.getpid()}")


def write_copy(src: sqlite3.Connection, tmp: str, *, mode: int = 0o660,
               gid: int | None = None) -> list[str]:
    """Copy the database of ``src`` into the new file ``tmp`` (one consistent snapshot,
    by the backup API), in rollback-journal mode, fsynced, with ``mode`` and ``gid``.
    Returns the copy's problems (integrity_check; empty: sound). Removes ``tmp`` on an
    error and re-raises."""
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, mode)
        if gid is not None and gid != os.getegid():
            with suppress(PermissionError):
                os.fchown(fd, -1, gid)
        os.close(fd)
        fd = -1
        dst = sqlite3.connect(tmp, isolation_level=None)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE").fetchone()
            bad = _check(dst, False, None)
        finally:
            dst.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        return bad
    except BaseException:
        if fd >= 0:
            os.close(fd)
        remove_quietly(tmp)
        remove_quietly(tmp + "-journal")
        raise


def install(tmp: str, dest: str) -> None:
    """Rename ``tmp`` over ``dest`` (same directory) and fsync the directory."""
    os.replace(tmp, dest)
    fsync_dir(os.path.dirname(os.path.abspath(dest)))


def remove_quietly(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def group_of(path: str) -> int | None:
    """The gid of ``path``, or of its directory when it does not exist."""
    for p in (path, os.path.dirname(os.path.abspath(path))):
        with suppress(OSError):
            return os.stat(p).st_gid
    return None


def group_name(gid: int | None) -> str:
    if gid is None:
        return "?"
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def holders(path: str, proc: str = "/proc") -> list[tuple[int, str]]:
    """Other processes that hold the DB at ``path`` (or its ``-wal``/``-shm``) open:
    (pid, command name). Processes this one may not inspect are not seen."""
    want = {i for i in (identity(path + s) for s in ("", *SIDECARS)) if i is not None}
    out: list[tuple[int, str]] = []
    if not want:
        return out
    me = os.getpid()
    for pid in os.listdir(proc):
        if not pid.isdigit() or int(pid) == me:
            continue
        fd_dir = os.path.join(proc, pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                st = os.stat(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in want:
                try:
                    with open(os.path.join(proc, pid, "comm")) as f:
                        comm = f.read().strip()
                except OSError:
                    comm = "?"
                out.append((int(pid), comm))
                break
    return out
