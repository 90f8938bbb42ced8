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
