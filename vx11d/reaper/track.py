"""Event-driven process tracking: each process is read once, its exit is an event.

A full scan re-reads ``/proc/PID/stat`` of every process on every tick. The tracker
keeps the process table between ticks instead and learns what changed from events:

* **a new process**: ``/proc/loadavg`` names the last PID the kernel handed out in this
  PID namespace. When it moved, only the PIDs handed out since are probed (PIDs are
  allocated in increasing order until they wrap); a wrap, or more new PIDs than a probe
  is worth, falls back to listing ``/proc``. A probe only opens a pidfd (a thread, not
  a process, is refused with EINVAL and skipped): the process is read at the next
  refresh, by when most short-lived ones have exited and been reaped unread.
* **an exit**: every tracked process has a pidfd in an epoll set; a pidfd becomes
  readable when its process exits, which needs no capability and works for any
  process, not only children. If ``pidfd_open`` of the PID now fails, the process was
  reaped (and the PID not reused): it leaves the table without a read. Otherwise it is
  read again: a zombie stays in the table (and its parent is known at once), a new
  process on the PID is tracked anew. Known children of an exited process are read
  again too: they were re-parented (possible orphans).
* **a zombie reaped**: zombies have no pidfd in the set; each is re-read on every
  refresh (there are few, and a reap allocates no PID).
* **exec**: not an event here. A process is read again on the first refresh after it
  was first seen (most programs exec right after fork), on every full re-read
  (``full_every``) and, in the daemon, right before it is signalled.

Each pidfd costs a file descriptor. The tracker uses at most ``max_tracked`` of them
(from ``RLIMIT_NOFILE``, less a reserve); above that it stops tracking and the daemon
falls back to full scans (``polling``), so no zombie is ever missed: only the cost
changes. The Snapshot it hands out has exactly the shape ``proc.scan`` returns.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import select
import time
from collections.abc import Iterable

from .proc import HZ, Proc, Snapshot, read_proc, read_uptime_ticks, scan

YOUNG_TICKS = HZ  # a process first read less than 1 s after it started is read again
FD_RESERVE = 256  # descriptors kept free for the DB, metrics, journal and kill pidfds
PROBE_LIMIT = 4096  # more new PIDs than this since the last look: list /proc instead


def fd_budget(reserve: int = FD_RESERVE) -> int:
    """How many pidfds the tracker may hold: the soft RLIMIT_NOFILE less a reserve."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(0, soft - reserve)


def _boot_ticks() -> int:
    """Now on the boot clock, in the clock ticks of a process's start time."""
    return int(time.clock_gettime(time.CLOCK_BOOTTIME) * HZ)


def _exists(pid: int) -> bool:
    """Whether ``pid`` names a process (live or zombie) now: one syscall, no procfs."""
    try:
        os.close(os.pidfd_open(pid))
    except OSError as e:
        if e.errno in (errno.ESRCH, errno.EINVAL):
            return False  # reaped (EINVAL: the PID now names a thread)
        if e.errno in (errno.EMFILE, errno.ENFILE):
            return True  # cannot tell: read it
        raise
    return True


class LastPid:
    """The last PID handed out in this PID namespace (5th field of /proc/loadavg), read
    with ``pread`` on a descriptor kept open: four times a second, an open and close
    each time cost more than the read."""

    def __init__(self, proc: str = "/proc"):
        self.fd = os.open(f"{proc}/loadavg", os.O_RDONLY | os.O_CLOEXEC)

    def read(self) -> int:
        return int(os.pread(self.fd, 256, 0).split()[4])

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Tracker:
    """The process table kept up to date from pidfd exit events and new-PID probes."""

    def __init__(self, proc: str = "/proc", *, max_tracked: int | None = None,
                 full_every: int = 20):
        self.proc = proc
        self.max_tracked = fd_budget() if max_tracked is None else max_tracked
        self.full_every = max(1, full_every)
        self.procs: dict[int, Proc] = {}
        self.children: dict[int, set[int]] = {}
        self.zombies: set[int] = set()
        self._fds: dict[int, int] = {}  # pid -> pidfd (live processes only)
        self._pids: dict[int, int] = {}  # pidfd -> pid
        self._young: set[int] = set()
        self._unread: set[int] = set()  # probed (pidfd open), not read yet
        self._ep = select.epoll()
        self._loadavg = LastPid(proc)
        self._last_pid = -1
        self._refreshes = 0
        self.overflow = False  # True once the fd budget ran out: use full scans
        self.events = 0
        self.probes = 0
        self.listings = 0

    # --- the daemon's side ---------------------------------------------------------

    def fileno(self) -> int:
        """The epoll fd: readable while an exit event waits (for the daemon's loop)."""
        return self._ep.fileno()

    def close(self) -> None:
        """Close every pidfd and the epoll set."""
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
        self._pids.clear()
        self._ep.close()
        self._loadavg.close()

    def __del__(self) -> None:
        # A tracker dropped without close() (a reaper object thrown away) must not keep
        # thousands of pidfds open.
        with contextlib.suppress(Exception):
            self.close()

    def snapshot(self) -> Snapshot:
        """The tracked table as a Snapshot (shared Proc objects; do not mutate)."""
        zp: dict[int, list[int]] = {}
        for pid in self.zombies:
            p = self.procs.get(pid)
            if p is not None:
                zp.setdefault(p.ppid, []).append(pid)
        return Snapshot(dict(self.procs), read_uptime_ticks(self.proc), 0, zp)

    def handle_events(self) -> int:
        """Account for the processes whose pidfds fired (exits); returns how many did."""
        ready = self._ep.poll(0)
        for fd, _ in ready:
            pid = self._pids.get(fd)
            if pid is None:
                continue
            self._drop_fd(pid)
            self.events += 1
            self._unread.discard(pid)
            old = self.procs.get(pid)
            if _exists(pid):
                self._reread(pid, old)
            elif old is not None:
                self._forget(pid)
            for child in list(self.children.get(pid, ())):
                self._reread(child, self.procs.get(child))
        return len(ready)

    @property
    def last_pid(self) -> int:
        """The last PID the kernel had handed out at the last look (-1 before one)."""
        return self._last_pid

    def check_new(self) -> int:
        """Probe the PIDs handed out since the last look; returns how many were new."""
        last = self._loadavg.read()
        prev = self._last_pid
        if last == prev:
            return 0
        self._last_pid = last
        if prev < 0 or last < prev or last - prev > PROBE_LIMIT:
            return self._list_all()
        self.probes += 1
        n = 0
        for pid in range(prev + 1, last + 1):
            n += self._watch(pid)
        return n

    def refresh(self) -> None:
        """A tick's work before evaluation: events, new PIDs, zombies, young processes,
        and every ``full_every`` refreshes a full re-read of the table."""
        self.handle_events()
        self._refreshes += 1
        if self._refreshes % self.full_every == 0:
            self._reread_all()
            return
        self.check_new()
        self._read_unread()
        for pid in list(self.zombies):
            self._reread(pid, self.procs.get(pid))
        young, self._young = self._young, set()
        for pid in young:
            if pid in self.procs:
                self._reread(pid, self.procs[pid])

    def reread(self, pids: Iterable[int]) -> bool:
        """Read these processes again (before acting on them); True if any changed."""
        changed = False
        for pid in pids:
            old = self.procs.get(pid)
            new = self._reread(pid, old)
            if new is None or old is None or (new.comm, new.uid, new.ppid, new.state) != (
                    old.comm, old.uid, old.ppid, old.state):
                changed = True
        return changed

    # --- the table -----------------------------------------------------------------

    def _list_all(self) -> int:
        self.listings += 1
        listed = {int(n) for n in os.listdir(self.proc) if n.isdigit()}
        for pid in [p for p in self.procs if p not in listed]:
            self._forget(pid)
        self._read_unread()
        return self._add_many(sorted(listed - self.procs.keys()))

    def _reread_all(self) -> None:
        """A full scan, merged into the table (the periodic safety net)."""
        self.listings += 1
        self._last_pid = self._loadavg.read()
        snap = scan(self.proc)
        self._read_unread()
        for pid in [p for p in self.procs if p not in snap.procs]:
            self._forget(pid)
        for pid, p in snap.procs.items():
            old = self.procs.get(pid)
            if old is not None and old.start == p.start:
                self._store(p, old)
            else:
                if old is not None:
                    self._forget(pid)
                self._add(pid)
        self._young.clear()

    def _add_many(self, pids: Iterable[int]) -> int:
        n = 0
        for pid in pids:
            if pid not in self.procs and self._add(pid):
                n += 1
        return n

    def _open_pidfd(self, pid: int) -> int | None:
        """A pidfd for ``pid`` within the fd budget; None when gone, a thread, or the
        budget is spent (then ``overflow``: the daemon falls back to full scans)."""
        if self.overflow:
            return None
        if len(self._fds) >= self.max_tracked:
            self.overflow = True
            return None
        try:
            return os.pidfd_open(pid)
        except OSError as e:
            if e.errno in (errno.ESRCH, errno.ENOENT, errno.EINVAL):
                return None  # gone (or never was), or a thread, not a process
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            self.overflow = True
            return None

    def _register(self, pid: int, fd: int) -> None:
        self._fds[pid] = fd
        self._pids[fd] = pid
        self._ep.register(fd, select.EPOLLIN)

    def _watch(self, pid: int) -> int:
        """A probed PID: its pidfd goes into the set; it is read at the next refresh."""
        if pid in self.procs or pid in self._fds:
            return 0
        fd = self._open_pidfd(pid)
        if fd is None:
            return 0
        self._register(pid, fd)
        self._unread.add(pid)
        return 1

    def _read(self, pid: int) -> Proc | None:
        return read_proc(self.proc, pid)

    def _read_unread(self) -> None:
        unread, self._unread = self._unread, set()
        for pid in unread:
            p = self._read(pid)
            if p is None:
                self._drop_fd(pid)
                continue
            self._stored(p)

    def _add(self, pid: int) -> bool:
        """Start tracking ``pid``: pidfd first, then the read that proves it is that one."""
        fd = self._open_pidfd(pid)
        p = self._read(pid)
        if p is None:
            if fd is not None:
                os.close(fd)
            return False
        if fd is not None:
            self._register(pid, fd)
        self._stored(p)
        return True

    def _stored(self, p: Proc) -> None:
        """A process read for the first time: into the table; its pidfd (if any) kept
        while it lives."""
        self._store(p, None)
        if _boot_ticks() - p.start < YOUNG_TICKS:
            self._young.add(p.pid)  # may not have exec'd yet: read it again next refresh
        if p.state in ("Z", "X"):
            self._drop_fd(p.pid)

    def _reread(self, pid: int, old: Proc | None) -> Proc | None:
        """Read ``pid`` again; a different start time means a new process took the PID."""
        p = self._read(pid)
        if p is None:
            self._forget(pid)
            return None
        if old is not None and p.start != old.start:
            self._forget(pid)
            self._add(pid)
            return self.procs.get(pid)
        if old is None:
            self._add(pid)
            return self.procs.get(pid)
        self._store(p, old)
        if p.state in ("Z", "X"):
            self._drop_fd(pid)
        return p

    def _store(self, p: Proc, old: Proc | None) -> None:
        if old is not None and old.ppid != p.ppid:
            kids = self.children.get(old.ppid)
            if kids is not None:
                kids.discard(p.pid)
                if not kids:
                    del self.children[old.ppid]
        self.procs[p.pid] = p
        self.children.setdefault(p.ppid, set()).add(p.pid)
        if p.state == "Z":
            self.zombies.add(p.pid)
        else:
            self.zombies.discard(p.pid)

    def _forget(self, pid: int) -> None:
        self._drop_fd(pid)
        self._unread.discard(pid)
        p = self.procs.pop(pid, None)
        self.zombies.discard(pid)
        self._young.discard(pid)
        if p is not None:
            kids = self.children.get(p.ppid)
            if kids is not None:
                kids.discard(pid)
                if not kids:
                    del self.children[p.ppid]

    def _drop_fd(self, pid: int) -> None:
        fd = self._fds.pop(pid, None)
        if fd is not None:
            self._pids.pop(fd, None)
            with contextlib.suppress(OSError, ValueError):
                self._ep.unregister(fd)
            os.close(fd)

    def watching(self, pid: int) -> bool:
        """Whether ``pid`` has a pidfd in the set (read yet or not)."""
        return pid in self._fds

    @property
    def tracked_fds(self) -> int:
        return len(self._fds)
