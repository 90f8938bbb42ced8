"""A directory's entries changing, as a file descriptor an event loop can wait on.

inotify (through libc): a name created, deleted or moved in or out of the directory
makes the fd readable. madre waits on it for the shared DB's directory instead of
stat()ing the DB file on a clock: a deleted or replaced file is noticed at once, and a
quiet directory costs nothing. Where inotify is not available (no libc symbol, the
per-user instance limit reached) :func:`open_watch` returns None and the caller falls
back to its periodic pass.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger("vx11.dirwatch")

IN_ATTRIB = 0x004
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
ENTRIES = IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF


class DirWatch:
    """An inotify instance watching one directory's entries."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def drain(self) -> int:
        """Read the pending events (their detail is not needed); bytes read."""
        n = 0
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.fd, 65536):
                n += len(chunk)
        return n

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_watch(directory: str, mask: int = ENTRIES) -> DirWatch | None:
    """A non-blocking watch on ``directory``'s entries, or None (logged) if impossible."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        init, add = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError) as e:
        log.info("no inotify here (%s): %s is checked on madre's passes only", e, directory)
        return None
    fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        log.warning("inotify: %s; %s is checked on madre's passes only",
                    os.strerror(ctypes.get_errno()), directory)
        return None
    if add(fd, os.fsencode(directory), mask) < 0:
        err = ctypes.get_errno()
        os.close(fd)
        log.warning("inotify on %s: %s; it is checked on madre's passes only", directory,
                    os.strerror(err))
        return None
    return DirWatch(fd)
