"""Prometheus plumbing: a registry per daemon, served on loopback or written as a textfile."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, Gauge, generate_latest, make_wsgi_app
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


class _Quiet(WSGIRequestHandler):
    """No access log line per scrape on stderr (the journal)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer(ThreadingMixIn, WSGIServer):
    """``/metrics`` over HTTP from a thread blocked in ``accept()``: no poll interval,
    no wakeup between scrapes (socketserver's ``serve_forever`` wakes every 0.5 s).
    Each scrape is answered in a thread of its own; :meth:`shutdown` wakes the blocked
    accept by shutting the listening socket down, so a stop is immediate."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: str, port: int, app: Any) -> None:
        self.address_family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
        super().__init__((address, port), _Quiet)
        self.set_app(app)
        self._closing = False
        self.thread = threading.Thread(target=self._accept_loop, name="vx11-metrics",
                                       daemon=True)

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                request, client = self.get_request()
            except OSError:
                continue  # the shutdown woke accept() (or a client vanished): look again
            if self.verify_request(request, client):
                self.process_request(request, client)
            else:
                self.shutdown_request(request)

    def shutdown(self) -> None:
        """Stop accepting now (a scrape in progress finishes in its thread)."""
        self._closing = True
        with contextlib.suppress(OSError):
            self.socket.shutdown(socket.SHUT_RDWR)
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(5.0)
        self.server_close()


def serve(registry: CollectorRegistry, address: str, port: int) -> MetricsServer:
    """Serve ``/metrics`` for ``registry`` on ``address:port``; returns the server.

    An address this host does not have (a fleet metrics_address copied to the wrong
    host) is a config error (exit 78, one journal line), not a traceback.
    """
    try:
        server = MetricsServer(address, port, make_wsgi_app(registry))
    except OSError as e:
        if e.errno not in (errno.EADDRNOTAVAIL, socket.EAI_NONAME):
            raise
        raise ConfigError(config_path(), "metrics_address",
                          f"{address} is not an address of this host (cannot listen on "
                          f"{address}:{port}); use loopback or this host's own address"
                          ) from e
    server.thread.start()
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
