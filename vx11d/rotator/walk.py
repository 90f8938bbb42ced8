"""Walk an audit dir by file descriptor: no symlink followed, no mount crossed.

Every directory is opened relative to its parent's fd with ``O_NOFOLLOW|O_DIRECTORY``
and checked against the ``lstat`` the listing saw, so a directory swapped for a symlink
at any moment is caught (``ELOOP``/``ENOTDIR`` or an inode mismatch) instead of
followed. Symlinks are archived as links. What is never archived nor deleted is
*kept* and reported: hard-excluded names at any depth (a directory that matches keeps
its whole subtree), other file systems (mount points), hardlinked files owned by
someone other than the audit root's owner, and fifos, sockets and devices.

Entries come out in a fixed order (names sorted, parents before children), so two
walks of the same tree give the same sequence: the archive verifier and the crash
recovery compare sequences without holding a tree in memory.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..errors import Vx11Error

HARD_EXCLUDE = ("SCORECARD.json", "DB_SCHEMA*", "DB_MAP*")
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

Hook = Callable[[str, str], None]


class WalkError(Vx11Error):
    """The tree could not be read completely or changed under the walk."""


@dataclass
class Kept:
    """Something left in place, never archived nor deleted, and why."""

    rel: str
    reason: str


@dataclass
class Entry:
    """One archive member: ``rel`` is '' for the audit dir itself."""

    rel: str
    kind: str  # "d" directory, "f" regular file, "l" symlink
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    link: str = ""
    fd: int | None = None

    def key(self) -> str:
        """What must match between the walk and the archive (a dir's mtime is left out:
        removing its children changes it)."""
        mtime = "-" if self.kind == "d" else str(self.mtime)
        return f"{self.kind}\0{self.rel}\0{self.size}\0{mtime}\0{self.link}\0{self.mode:o}\n"


@dataclass
class Policy:
    """What the walk keeps in place: patterns, the root's device and owner."""

    patterns: tuple[str, ...]
    dev: int
    owner: int

    def excluded(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def keep_reason(self, name: str, st: os.stat_result) -> str | None:
        """Why an entry stays in place, or None if it is archived and removed."""
        if self.excluded(name):
            return "hard-excluded"
        if st.st_dev != self.dev:
            return "on another file system (mount point)"
        if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
            return None
        if stat.S_ISREG(st.st_mode):
            if st.st_nlink > 1 and st.st_uid != self.owner:
                return f"hardlinked file owned by uid {st.st_uid}, not the root's owner"
            return None
        return "special file (fifo, socket or device)"


def patterns_for(extra: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The hard-exclude patterns in force: the fixed ones plus config's."""
    return HARD_EXCLUDE + tuple(p for p in extra if p not in HARD_EXCLUDE)


def join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def lstat_at(dir_fd: int, name: str) -> os.stat_result:
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def open_dir(parent_fd: int, name: str, seen: os.stat_result | None, rel: str) -> int:
    """Open a subdirectory without following links; WalkError if it is not what was seen."""
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=parent_fd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
            raise WalkError(f"{rel or '.'}: changed during the walk "
                            f"({os.strerror(e.errno)}); not followed") from e
        raise WalkError(f"{rel or '.'}: cannot open: {e.strerror}") from e
    st = os.fstat(fd)
    if seen is not None and (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino):
        os.close(fd)
        raise WalkError(f"{rel or '.'}: replaced during the walk; not followed")
    return fd


def list_dir(fd: int, rel: str) -> list[str]:
    """Sorted names in an open directory."""
    try:
        return sorted(os.listdir(fd))
    except OSError as e:
        raise WalkError(f"{rel or '.'}: cannot list: {e.strerror}") from e


@dataclass
class Walker:
    """Walks one audit dir; ``kept`` collects what stays in place."""

    policy: Policy
    open_files: bool = False
    hook: Hook | None = None
    kept: list[Kept] = field(default_factory=list)

    def walk(self, parent_fd: int, name: str) -> Iterator[Entry]:
        """Entries of ``parent_fd/name`` (itself first); files carry an open fd when
        ``open_files`` (closed when the next entry is asked for)."""
        seen = lstat_at(parent_fd, name)
        if not stat.S_ISDIR(seen.st_mode) or seen.st_dev != self.policy.dev:
            raise WalkError(f"{name}: not a directory on the root's file system")
        fd = open_dir(parent_fd, name, seen, "")
        try:
            yield self._entry("", "d", seen)
            yield from self._walk_dir(fd, "")
        finally:
            os.close(fd)

    def _entry(self, rel: str, kind: str, st: os.stat_result, link: str = "",
               fd: int | None = None) -> Entry:
        return Entry(rel, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                     st.st_size if kind == "f" else 0, int(st.st_mtime), link, fd)

    def _walk_dir(self, dfd: int, prefix: str) -> Iterator[Entry]:
        for name in list_dir(dfd, prefix):
            rel = join(prefix, name)
            try:
                st = lstat_at(dfd, name)
            except OSError as e:
                raise WalkError(f"{rel}: vanished or unreadable during the walk: "
                                f"{e.strerror}") from e
            reason = self.policy.keep_reason(name, st)
            if reason:
                self.kept.append(Kept(rel, reason))
                continue
            if stat.S_ISDIR(st.st_mode):
                if self.hook:
                    self.hook("dir", rel)
                cfd = open_dir(dfd, name, st, rel)
                try:
                    yield self._entry(rel, "d", st)
                    yield from self._walk_dir(cfd, rel)
                finally:
                    os.close(cfd)
            elif stat.S_ISLNK(st.st_mode):
                try:
                    link = os.readlink(name, dir_fd=dfd)
                except OSError as e:
                    raise WalkError(f"{rel}: changed during the walk: {e.strerror}") from e
                yield self._entry(rel, "l", st, link)
            elif self.open_files:
                yield from self._open_file(dfd, name, rel, st)
            else:
                yield self._entry(rel, "f", st)

    def _open_file(self, dfd: int, name: str, rel: str, st: os.stat_result
                   ) -> Iterator[Entry]:
        if self.hook:
            self.hook("file", rel)
        try:
            ffd = os.open(name, FILE_FLAGS, dir_fd=dfd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOENT):
                raise WalkError(f"{rel}: changed during the walk; not followed") from e
            raise WalkError(f"{rel}: cannot read: {e.strerror}") from e
        try:
            fst = os.fstat(ffd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino) \
                    or not stat.S_ISREG(fst.st_mode):
                raise WalkError(f"{rel}: replaced during the walk; not followed")
            yield self._entry(rel, "f", fst, fd=ffd)
        finally:
            os.close(ffd)
