"""Event-driven process tracking: each process is read once, its exit is an event.

A full scan re-reads ``/proc/PID/stat`` of every process on every tick. The tracker
keeps the process table between ticks instead and learns what changed from events:

* **a new process**: ``/proc/loadavg`` names the last PID the kernel handed out in this
  PID namespace. When it moved, only the PIDs handed out since are probed (PIDs are
  allocated in increasing order until they wrap); a wrap, or more new PIDs than a probe
  is worth, falls back to listing ``/proc``. A probed PID that is a thread, not a
  process, is skipped (``pidfd_open`` refuses non-leaders with EINVAL).
* **an exit**: every tracked process has a pidfd in an epoll set; a pidfd becomes
  readable when its process exits, which needs no capability and works for any
  process, not only children. The exited process is read again: a zombie stays in the
  table (and its parent is known at once), a reaped one leaves it. Its known children
  are read again too: they were re-parented (possible orphans).
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


def read_last_pid(proc: str = "/proc") -> int:
    """The last PID handed out in this PID namespace (5th field of /proc/loadavg)."""
    with open(f"{proc}/loadavg", "rb") as f:
        return int(f.read().split()[4])


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
        self._ep = select.epoll()
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
        """Read the processes whose pidfds fired (exits); returns how many did."""
        ready = self._ep.poll(0)
        for fd, _ in ready:
            pid = self._pids.get(fd)
            if pid is None:
                continue
            self._drop_fd(pid)
            self.events += 1
            old = self.procs.get(pid)
            self._reread(pid, old)
            if old is not None:
                for child in list(self.children.get(pid, ())):
                    self._reread(child, self.procs.get(child))
        return len(ready)

    def check_new(self) -> int:
        """Probe the PIDs handed out since the last look; returns how many were new."""
        last = read_last_pid(self.proc)
        prev = self._last_pid
        if last == prev:
            return 0
        self._last_pid = last
        if prev < 0 or last < prev or last - prev > PROBE_LIMIT:
            return self._list_all()
        self.probes += 1
        return self._add_many(range(prev + 1, last + 1), probe=True)

    def refresh(self) -> None:
        """A tick's work before evaluation: events, new PIDs, zombies, young processes,
        and every ``full_every`` refreshes a full re-read of the table."""
        self.handle_events()
        self._refreshes += 1
        if self._refreshes % self.full_every == 0:
            self._reread_all()
            return
        self.check_new()
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
        return self._add_many(sorted(listed - self.procs.keys()), probe=False)

    def _reread_all(self) -> None:
        """A full scan, merged into the table (the periodic safety net)."""
        self.listings += 1
        self._last_pid = read_last_pid(self.proc)
        snap = scan(self.proc)
        for pid in [p for p in self.procs if p not in snap.procs]:
            self._forget(pid)
        for pid, p in snap.procs.items():
            old = self.procs.get(pid)
            if old is not None and old.start == p.start:
                self._store(p, old)
            else:
                if old is not None:
                    self._forget(pid)
                self._add(pid, probe=False)
        self._young.clear()

    def _add_many(self, pids: Iterable[int], *, probe: bool) -> int:
        n = 0
        for pid in pids:
            if pid not in self.procs and self._add(pid, probe=probe):
                n += 1
        return n

    def _add(self, pid: int, *, probe: bool) -> bool:
        """Start tracking ``pid``: pidfd first, then the read that proves it is that one."""
        fd = None
        if not self.overflow:
            try:
                fd = os.pidfd_open(pid)
            except OSError as e:
                if e.errno in (errno.ESRCH, errno.ENOENT):
                    return False  # gone (or never was)
                if e.errno == errno.EINVAL:
                    return False  # a thread (probing by PID), not a process
                if e.errno not in (errno.EMFILE, errno.ENFILE):
                    raise
                self.overflow = True
        elif probe:
            return False
        p = read_proc(self.proc, pid)
        if p is None:
            if fd is not None:
                os.close(fd)
            return False
        self._store(p, None)
        if _boot_ticks() - p.start < YOUNG_TICKS:
            self._young.add(pid)  # may not have exec'd yet: read it again next refresh
        if fd is not None and p.state not in ("Z", "X"):
            if len(self._fds) >= self.max_tracked:
                os.close(fd)
                self.overflow = True
            else:
                self._fds[pid] = fd
                self._pids[fd] = pid
                self._ep.register(fd, select.EPOLLIN)
        elif fd is not None:
            os.close(fd)
        return True

    def _reread(self, pid: int, old: Proc | None) -> Proc | None:
        """Read ``pid`` again; a different start time means a new process took the PID."""
        p = read_proc(self.proc, pid)
        if p is None:
            self._forget(pid)
            return None
        if old is not None and p.start != old.start:
            self._forget(pid)
            self._add(pid, probe=False)
            return self.procs.get(pid)
        if old is None:
            self._add(pid, probe=False)
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

    @property
    def tracked_fds(self) -> int:
        return len(self._fds)
