"""The reaper's circuit breaker: when a rule plainly matches more than it should, stop.

It trips, before any signal of that scan is sent, when

* one configured rule would signal more than ``breaker_max_share`` of all processes in
  the scan and at least ``breaker_min_matches`` of them (a rule like ``comm: '.*'``), or
* ``breaker_max_signals`` processes were signalled within ``breaker_window`` and a
  configured rule asks for one more.

The built-in hija rule is not counted (the caller leaves it out), but a trip stops it too.

Tripped, the reaper is observe-only: it sends nothing (pending terminations are
abandoned), says so in STATUS, the journal (``reaper_enforcement_stopped``) and the
``vx11_reaper_enforcement_stopped`` gauge. It stays so across restarts (the trip is
written to ``breaker_file``) until an operator re-arms it: ``vx11ctl reaper rearm``
removes that file and reloads the reaper. A reload alone does not re-arm it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass

from ..config import ReaperConfig

log = logging.getLogger("vx11.reaper")


@dataclass
class Trip:
    """Why enforcement stopped."""

    reason: str  # one line for STATUS and the journal
    rule: str
    at: float  # unix time

    def as_dict(self) -> dict[str, object]:
        return {"reason": self.reason, "rule": self.rule, "at": self.at}


def share_verdict(cfg: ReaperConfig, counts: dict[str, int], processes: int) -> Trip | None:
    """The share test for one scan: ``counts`` is processes each rule would signal."""
    limit = max(cfg.breaker_min_matches, cfg.breaker_max_share * processes)
    for rule, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        if n > limit and n >= cfg.breaker_min_matches:
            return Trip(f"rule {rule} would signal {n} of {processes} processes (limit "
                        f"{int(limit)}: breaker_max_share {cfg.breaker_max_share:g}, "
                        f"breaker_min_matches {cfg.breaker_min_matches})", rule, time.time())
    return None


class Breaker:
    """Trip state, the recent-signal window and the file that remembers a trip."""

    def __init__(self, cfg: ReaperConfig, path: str | None, clock=time.monotonic):  # type: ignore[no-untyped-def]
        self.cfg = cfg
        self.path = path
        self.clock = clock
        self.trip: Trip | None = None
        self._signals: collections.deque[float] = collections.deque()
        self.load()

    def configure(self, cfg: ReaperConfig) -> None:
        """A reload: new limits; the trip state is read again from the file."""
        self.cfg = cfg
        self.load()

    def load(self) -> None:
        """Read a remembered trip (no file: armed; an unreadable one: stay tripped)."""
        if self.path is None:
            return
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            self.trip = Trip(str(data["reason"]), str(data["rule"]), float(data["at"]))
        except FileNotFoundError:
            if self.trip is not None:
                log.warning("circuit breaker re-armed (%s removed): enforcement resumes",
                            self.path, extra={"VX11_EVENT": "reaper_enforcement_rearmed"})
            self.trip = None
            self._signals.clear()
        except (OSError, ValueError, KeyError, TypeError) as e:
            self.trip = self.trip or Trip(f"{self.path} is unreadable ({e}); remove it to "
                                          "re-arm", "", time.time())

    @property
    def open(self) -> bool:
        """True while enforcement is stopped."""
        return self.trip is not None

    def check_scan(self, counts: dict[str, int], processes: int) -> Trip | None:
        """Trip on this scan's figures (before anything is signalled); the new trip."""
        if self.trip is not None:
            return None
        t = share_verdict(self.cfg, counts, processes)
        if t is not None:
            self._trip(t)
        return t

    def allow(self, rule: str) -> Trip | None:
        """Before signalling one more process: trips (and returns why) when
        breaker_max_signals were already signalled within breaker_window."""
        now = self.clock()
        while self._signals and now - self._signals[0] > self.cfg.breaker_window:
            self._signals.popleft()
        if self.trip is None and len(self._signals) >= self.cfg.breaker_max_signals:
            t = Trip(f"{len(self._signals)} processes signalled within "
                     f"{self.cfg.breaker_window:g}s and rule {rule} asks for more "
                     f"(breaker_max_signals {self.cfg.breaker_max_signals})", rule, time.time())
            self._trip(t)
            return t
        return None

    def signalled(self) -> None:
        """Count one process signalled (a SIGTERM started or a SIGCHLD nudge)."""
        self._signals.append(self.clock())

    def _trip(self, t: Trip) -> None:
        self.trip = t
        if self.path is None:
            return
        tmp = f"{self.path}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(t.as_dict(), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            log.warning("cannot remember the breaker trip in %s: %s (it holds until the "
                        "reaper restarts)", self.path, e.strerror,
                        extra={"VX11_EVENT": "reaper_breaker_file_failed"})
