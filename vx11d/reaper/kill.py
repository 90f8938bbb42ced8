"""Signals through pidfds only, after proving the pidfd holds the process the scan saw.

``open_verified`` opens a pidfd for a PID, then re-reads ``/proc/PID/stat`` and the
cgroup: if the start time differs the PID was reused and nothing is sent; once the
pidfd is verified it pins that one process, so the later SIGKILL cannot hit a
newcomer either (``pidfd_send_signal`` on an exited process fails with ESRCH).
``Terminator`` runs TERM -> grace -> KILL without blocking: the daemon's loop calls
``poll`` when the next deadline comes.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from .proc import read_cgroup, read_proc

KILL_WAIT = 5.0  # after SIGKILL, how long before a survivor is reported (D state)


@dataclass
class Verified:
    """An open pidfd for the process a scan saw, or the reason there is none."""

    fd: int | None
    reason: str  # ok | vanished | pid_reused | exited | cgroup_changed | refused


def open_verified(proc: str, pid: int, start: int,
                  allowed: Callable[[str | None], bool] | None = None) -> Verified:
    """A pidfd for ``pid`` only if it is still the process that started at ``start`` ticks.

    ``allowed`` gets the freshly read cgroup; returning False refuses the signal.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return Verified(None, "vanished")
    except OSError:
        return Verified(None, "vanished")
    ok = False
    try:
        p = read_proc(proc, pid)
        if p is None:
            return Verified(None, "vanished")
        if p.start != start:
            return Verified(None, "pid_reused")
        if p.state in ("Z", "X"):
            return Verified(None, "exited")
        if allowed is not None:
            cg = read_cgroup(proc, pid)
            if cg is None:
                return Verified(None, "vanished")
            if not allowed(cg):
                return Verified(None, "refused")
        ok = True
        return Verified(fd, "ok")
    finally:
        if not ok:
            os.close(fd)


def send(fd: int, sig: int) -> bool:
    """Send ``sig`` through the pidfd; False when the process has already exited."""
    try:
        signal.pidfd_send_signal(fd, sig)
    except ProcessLookupError:
        return False
    return True


def has_exited(fd: int, timeout: float = 0.0) -> bool:
    """True once the process behind the pidfd has exited (the pidfd polls readable)."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(max(0, int(timeout * 1000))))


@dataclass
class Pending:
    """A termination in progress."""

    fd: int
    key: tuple[int, int]
    term_at: float
    kill_at: float
    finding: object
    killed_at: float | None = None


class Terminator:
    """TERM -> grace -> KILL for several processes at once, driven by ``poll``."""

    POLL_EVERY = 0.2

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.pending: dict[tuple[int, int], Pending] = {}

    def busy(self, key: tuple[int, int]) -> bool:
        return key in self.pending

    def begin(self, fd: int, key: tuple[int, int], grace: float, finding: object) -> bool:
        """Send SIGTERM through a verified pidfd; False (fd closed) if it was already gone."""
        if not send(fd, signal.SIGTERM):
            os.close(fd)
            return False
        now = self.clock()
        self.pending[key] = Pending(fd, key, now, now + grace, finding)
        return True

    def next_deadline(self) -> float | None:
        """When ``poll`` should run next (None: nothing pending)."""
        if not self.pending:
            return None
        return self.clock() + self.POLL_EVERY

    def poll(self) -> list[tuple[Pending, str, str | None]]:
        """Advance every termination: (pending, outcome, signal sent now or None) events.

        Outcomes: ``exited_after_sigterm``, ``sigkill_sent``, ``exited_after_sigkill``,
        ``survived_sigkill`` (still there KILL_WAIT s after SIGKILL: D state).
        """
        out: list[tuple[Pending, str, str | None]] = []
        now = self.clock()
        for key, pd in list(self.pending.items()):
            if has_exited(pd.fd):
                out.append((pd, "exited_after_sigkill" if pd.killed_at is not None
                            else "exited_after_sigterm", None))
                self._done(key)
            elif pd.killed_at is None and now >= pd.kill_at:
                if send(pd.fd, signal.SIGKILL):
                    pd.killed_at = now
                    out.append((pd, "sigkill_sent", "SIGKILL"))
                    if has_exited(pd.fd, 0.5):
                        out.append((pd, "exited_after_sigkill", None))
                        self._done(key)
                else:
                    out.append((pd, "exited_after_sigterm", None))
                    self._done(key)
            elif pd.killed_at is not None and now - pd.killed_at >= KILL_WAIT:
                out.append((pd, "survived_sigkill", None))
                self._done(key)
        return out

    def _done(self, key: tuple[int, int]) -> None:
        pd = self.pending.pop(key)
        os.close(pd.fd)

    def close(self) -> list[Pending]:
        """Forget every pending termination (closing the pidfds); returns them."""
        left = list(self.pending.values())
        for key in list(self.pending):
            self._done(key)
        return left
