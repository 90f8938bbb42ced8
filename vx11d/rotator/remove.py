"""Remove an archived audit dir without ever following a link: unlinkat by dir fd.

Each directory is opened relative to its parent's fd with ``O_NOFOLLOW|O_DIRECTORY``
and checked against what ``lstat`` saw; names are unlinked relative to that fd. A
symlink is removed as a link (its target is never touched); a directory swapped for a
link mid-way is left alone and reported. What the walk keeps in place (hard-excluded
names, mount points, foreign hardlinks, special files) is kept here too, so the dirs
holding them stay.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

from .walk import Kept, Policy, WalkError, join, list_dir, lstat_at, open_dir


@dataclass
class Removed:
    files: int = 0
    dirs: int = 0
    kept: list[Kept] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.kept and not self.errors


def remove_tree(parent_fd: int, name: str, policy: Policy,
                on_unlink: Callable[[], None] | None = None) -> Removed:
    """Remove ``parent_fd/name`` and everything under it that is not kept."""
    res = Removed()
    try:
        seen = lstat_at(parent_fd, name)
    except FileNotFoundError:
        return res
    if not stat.S_ISDIR(seen.st_mode) or seen.st_dev != policy.dev:
        res.errors.append(f"{name}: no longer a directory on the root's file system; left")
        return res
    try:
        fd = open_dir(parent_fd, name, seen, "")
    except WalkError as e:
        res.errors.append(str(e))
        return res
    try:
        _remove_dir(fd, "", policy, res, on_unlink)
    finally:
        os.close(fd)
    _rmdir(parent_fd, name, ".", res)
    return res


def _remove_dir(dfd: int, prefix: str, policy: Policy, res: Removed,
                on_unlink: Callable[[], None] | None) -> None:
    try:
        names = list_dir(dfd, prefix)
    except WalkError as e:
        res.errors.append(str(e))
        return
    for name in names:
        rel = join(prefix, name)
        try:
            st = lstat_at(dfd, name)
        except FileNotFoundError:
            continue
        except OSError as e:
            res.errors.append(f"{rel}: {e.strerror}")
            continue
        reason = policy.keep_reason(name, st)
        if reason:
            res.kept.append(Kept(rel, reason))
            continue
        if stat.S_ISDIR(st.st_mode):
            try:
                cfd = open_dir(dfd, name, st, rel)
            except WalkError as e:
                res.errors.append(str(e))
                continue
            try:
                _remove_dir(cfd, rel, policy, res, on_unlink)
            finally:
                os.close(cfd)
            _rmdir(dfd, name, rel, res)
        else:
            try:
                os.unlink(name, dir_fd=dfd)
            except FileNotFoundError:
                continue
            except OSError as e:
                res.errors.append(f"{rel}: cannot remove: {e.strerror}")
                continue
            res.files += 1
            if on_unlink:
                on_unlink()


def _rmdir(dfd: int, name: str, rel: str, res: Removed) -> None:
    try:
        os.rmdir(name, dir_fd=dfd)
        res.dirs += 1
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and (res.kept or res.errors):
            return  # it holds something kept; it stays
        if e.errno != errno.ENOENT:
            res.errors.append(f"{rel}: cannot remove dir: {e.strerror}")
