"""Prometheus plumbing: a registry per daemon, served on loopback or written as a textfile."""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest, start_http_server
from prometheus_client.process_collector import ProcessCollector

from . import __version__
from .config import config_path
from .errors import ConfigError


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
    """Serve ``/metrics`` for ``registry`` on ``address:port``; returns the server.

    An address this host does not have (a fleet metrics_address copied to the wrong
    host) is a config error (exit 78, one journal line), not a traceback.
    """
    try:
        server, _thread = start_http_server(port, addr=address, registry=registry)
    except OSError as e:
        if e.errno != errno.EADDRNOTAVAIL:
            raise
        raise ConfigError(config_path(), "metrics_address",
                          f"{address} is not an address of this host (cannot listen on "
                          f"{address}:{port}); use loopback or this host's own address"
                          ) from e
    return server


# A textfile is read by node_exporter, which on Debian runs as user ``prometheus``: the
# file is world-readable whatever the writer's umask (metrics carry no secret). The
# directory (Debian's /var/lib/prometheus/node-exporter, group vx11 0775 by our
# tmpfiles.d) must be searchable by that user too.
TEXTFILE_MODE = 0o644


def write_textfile(registry: CollectorRegistry, path: str) -> None:
    """Write ``registry`` to a node_exporter textfile atomically, mode 0644.

    Temp file in the same dir (a name node_exporter ignores: not ``*.prom``), fsync,
    rename over ``path``: a scrape sees the old file or the new one, never half of one.
    """
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, TEXTFILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), TEXTFILE_MODE)  # the unit's UMask=0007 took bits off
            f.write(generate_latest(registry))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
