"""Activation windows: end expired ones, and keep vx11-hermes.service inside its window.

Windows are rows in ``activations`` written by the gateway (POST /vx11/policy) or
``vx11ctl activate``; madre ends them when they expire. Hermes runs only while a live
``hermes`` window exists or the profile is ``full``; ``switch`` is a window only (the
gateway checks it). Nothing elevates itself: madre only ever stops what no window
covers, and starts Hermes only for a window someone opened.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from .. import journal
from ..config import Config
from ..db import Database, record_event
from ..degraded import DB_FAULTS
from ..errors import DbError, SystemdError
from ..hijas import COMPONENTS
from .systemd import SystemdClient

log = logging.getLogger("vx11.madre")

HERMES_UNIT = "vx11-hermes.service"


class Windows:
    """Ends expired windows and starts/stops Hermes to match them."""

    def __init__(self, cfg: Config, db: Database, sd: SystemdClient, metrics: Any,
                 clock=time.time) -> None:
        self.cfg, self.db, self.sd, self.m, self.clock = cfg, db, sd, metrics, clock
        self._missing_logged = False
        self._wanted: bool | None = None  # Hermes wanted at the previous tick
        # set by madre: whether a DB write may be tried now, and where its failure goes
        self.may_write: Callable[[], bool] = lambda: True
        self.on_write_error: Callable[[DbError], Any] = lambda e: log.error("%s", e)
        self.live: dict[str, float] = {}

    def tick(self) -> None:
        now = self.clock()

        def expire(c: sqlite3.Connection) -> list[tuple[int, str]]:
            rows = c.execute("SELECT id, component FROM activations WHERE ended_at IS NULL "
                             "AND expires_at <= ?", (now,)).fetchall()
            for r in rows:
                c.execute("UPDATE activations SET ended_at = ?, ended_reason = 'expired' "
                          "WHERE id = ?", (now, r[0]))
                record_event(c, "madre", "activation_ended", subject=r[1], reason="expired",
                             activation_id=r[0])
            return [(r[0], r[1]) for r in rows]

        if self.may_write() and self.db.query(
                "SELECT 1 FROM activations WHERE ended_at IS NULL AND expires_at <= ? "
                "LIMIT 1", (now,)):
            try:
                ended = self.db.write(expire)
            except DB_FAULTS as e:  # recorded later; Hermes is stopped all the same
                self.on_write_error(e)
                ended = []
            for aid, comp in ended:
                journal.event(log, "activation_expired", "activation window %d of %s expired",
                              aid, comp, component_name=comp)
        live: dict[str, float] = {}
        for r in self.db.query("SELECT component, max(expires_at) FROM activations WHERE "
                               "ended_at IS NULL AND expires_at > ? GROUP BY component",
                               (now,)):
            live[r[0]] = r[1]
        self.live = live
        for comp in COMPONENTS:
            self.m.activations.labels(comp).set(1 if comp in live else 0)
        self._hermes("hermes" in live or self.cfg.madre.profile == "full")

    def _hermes(self, want: bool) -> None:
        """Start Hermes while wanted; stop it when its window ends (a transition only:
        a Hermes someone started by hand outside any window is reported, not killed)."""
        was, self._wanted = self._wanted, want
        try:
            if self.sd.load_state(HERMES_UNIT) != "loaded":
                if want and not self._missing_logged:
                    log.warning("%s is not installed: the hermes window is kept, but there "
                                "is nothing to start", HERMES_UNIT,
                                extra={"VX11_EVENT": "hermes_unit_missing"})
                    self._missing_logged = True
                return
            self._missing_logged = False
            p = self.sd.properties(HERMES_UNIT) or {}
            state = p.get("ActiveState", "inactive")
            if want and state in ("inactive", "failed"):
                journal.event(log, "hermes_started", "starting %s inside its activation "
                              "window", HERMES_UNIT)
                self.sd.start(HERMES_UNIT)
            elif not want and state in ("active", "activating", "reloading"):
                if was:
                    journal.event(log, "hermes_stopped", "stopping %s: its activation "
                                  "window ended", HERMES_UNIT)
                    self.sd.stop(HERMES_UNIT)
                elif was is None:
                    log.warning("%s runs outside any activation window (started by hand?)",
                                HERMES_UNIT, extra={"VX11_EVENT": "hermes_outside_window"})
        except SystemdError as e:
            log.warning("cannot manage %s: %s", HERMES_UNIT, e)

    def summary(self) -> str:
        if not self.live:
            return ""
        now = self.clock()
        return ", ".join(f"{c} window {max(0, int(t - now))}s" for c, t in
                         sorted(self.live.items()))
