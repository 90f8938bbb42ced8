"""Prometheus plumbing: a registry per daemon, served on loopback or written as a textfile."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server, write_to_textfile
from prometheus_client.process_collector import ProcessCollector

from . import __version__


def new_registry(component: str, *, process: bool = True,
                 proc_path: str = "/proc") -> CollectorRegistry:
    """A fresh registry with ``vx11_build_info`` and (optionally) this process's metrics."""
    registry = CollectorRegistry()
    info = Gauge("vx11_build_info", "vx11d version and component of this process",
                 ["version", "component"], registry=registry)
    info.labels(__version__, component).set(1)
    if process:
        ProcessCollector(namespace="vx11", registry=registry, proc=proc_path)
    return registry


def serve(registry: CollectorRegistry, address: str, port: int) -> Any:
    """Serve ``/metrics`` for ``registry`` on ``address:port``; returns the server."""
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server


def write_textfile(registry: CollectorRegistry, path: str) -> None:
    """Write ``registry`` to a node_exporter textfile atomically (temp file + rename)."""
    write_to_textfile(path, registry)


class DbFaultCollector:
    """``vx11_db_fault{cause}``: 1 for the cause a daemon's DB handle is degraded by, else 0.

    Read from the handle's last state at scrape time (no I/O). Every cause of
    :data:`vx11d.db.FAULT_CAUSES` is always exported, so an alert on
    ``vx11_db_fault{cause=~"db_missing|db_replaced"} == 1`` has a series from the start.
    """

    def __init__(self, db: Any) -> None:
        self.db = db

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        from .db import FAULT_CAUSES

        _, cause, _ = self.db.health()
        g = GaugeMetricFamily("vx11_db_fault", "1 while this daemon's database handle is "
                              "degraded by this cause (read_only, disk_full, db_missing, "
                              "locked, ...)", labels=["cause"])
        for c in FAULT_CAUSES:
            g.add_metric([c], 1.0 if c == cause else 0.0)
        if cause and cause not in FAULT_CAUSES:
            g.add_metric([cause], 1.0)
        yield g


def register_db(registry: CollectorRegistry, db: Any) -> None:
    """Export ``db``'s fault state (``vx11_db_fault``) in ``registry``."""
    registry.register(DbFaultCollector(db))
