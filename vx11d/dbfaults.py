"""What a host fault looks like to the shared database: SQLite and OS errors sorted into
the :mod:`vx11d.errors` classes by result code (never by message text), the free-space
probe, the read-only view a mount namespace can keep, and the marker that tells a lost
database from one never created. :mod:`vx11d.db` uses these; docs/faults.md lists the
causes and what each daemon does about them.
"""

from __future__ import annotations

import errno
import os
import sqlite3
from contextlib import suppress

from .errors import (
    DbBusy,
    DbCorrupt,
    DbError,
    DbFull,
    DbIntegrityError,
    DbIoError,
    DbMissing,
    DbReadOnly,
)

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


def free_bytes(path: str) -> int:
    try:
        vfs = os.statvfs(os.path.dirname(path) or ".")
    except OSError:
        return 0
    return vfs.f_bavail * vfs.f_frsize


def os_error(e: OSError, path: str) -> DbError:
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
    return os.path.exists(marker_path(path))


def marker_path(path: str) -> str:
    """A dotfile beside the DB saying a DB was created here (``rm vx11.db*`` spares it)."""
    d, base = os.path.split(path)
    return os.path.join(d, f".{base}.created")


def mark_created(path: str) -> None:
    marker = marker_path(path)
    if not os.path.exists(marker):
        with suppress(OSError):
            os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o640))


def create_shared(path: str) -> None:
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


def is_busy(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)
