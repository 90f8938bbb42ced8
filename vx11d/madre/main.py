"""``vx11d madre``: the wiring of the hija supervisor (Type=notify, root for unit control)."""

from __future__ import annotations

import asyncio

from .. import metrics, runtime, units
from ..config import Config
from ..db import Database
from ..pressure import PressureCollector
from .daemon import MadreService
from .streaks import FailedStreakCollector
from .systemd import PystemdClient


def main(cfg: Config, argv: list[str]) -> int:
    """Wire config, DB, metrics and the systemd client, and run until SIGTERM."""
    units.lean_pystemd()  # the D-Bus binding without lxml (~7 MB)
    registry = metrics.new_registry("madre")
    # migrations are applied by the service: a DB that refuses them degrades madre
    # (the config check keeps one DB wait well inside WatchdogSec)
    db = Database.from_config(cfg)
    sd = PystemdClient()
    service = MadreService(cfg, db, sd, registry)
    registry.register(FailedStreakCollector(Database.from_config(cfg, readonly=True),
                                            lambda: sorted(service.cfg.madre.templates)))
    # PSI of the hijas' slice and of Hermes (which may be down): read when scraped
    registry.register(PressureCollector())
    server = metrics.serve(registry, cfg.madre.metrics_address, cfg.madre.metrics_port)
    try:
        return asyncio.run(runtime.run_async(service))
    finally:
        server.shutdown()
