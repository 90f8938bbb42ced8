"""Pressure stall information (PSI) of vx11's cgroups, as Prometheus counters.

cgroup v2 keeps, for every cgroup, the time its tasks lost waiting for CPU, memory and
I/O (``cpu.pressure``, ``memory.pressure``, ``io.pressure``):

    some avg10=0.00 avg60=0.00 avg300=0.00 total=12345
    full avg10=0.00 avg60=0.00 avg300=0.00 total=678

``total`` is microseconds since the cgroup was made. ``some`` is time at least one task
waited (exported as ``vx11_pressure_waiting_seconds_total``), ``full`` time all of them did
(``vx11_pressure_stalled_seconds_total``), the names cAdvisor and node_exporter use. The
collector reads the files when Prometheus scrapes (no timer, nothing cached) and exports
what it can read: nothing on a host without PSI or without the unified hierarchy, and
nothing for a unit that is not running (its cgroup is gone). The averages are left out:
``rate()`` over the counters gives any window.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

RESOURCES = ("cpu", "memory", "io")
# Where vx11's units live in the unified hierarchy (units/, vx11d/madre/systemd.py).
UNITS = {"vx11-hermes.service": "system.slice/vx11-hermes.service",
         "vx11-hijas.slice": "vx11.slice/vx11-hijas.slice"}


def unified_root(mountinfo: str = "/proc/self/mountinfo") -> Path | None:
    """Where the cgroup v2 (unified) hierarchy is mounted: ``/sys/fs/cgroup`` on a pure v2
    host, ``/sys/fs/cgroup/unified`` on a hybrid one; None when there is none."""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        left, sep, right = line.partition(" - ")
        if sep and right.split(" ", 1)[0] == "cgroup2":
            return Path(left.split()[4])
    return None


def parse(text: str) -> dict[str, float]:
    """``{"some": seconds, "full": seconds}`` from a ``*.pressure`` file's text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for field in rest.split():
            key, _, value = field.partition("=")
            if key == "total" and value.isdigit() and kind in ("some", "full"):
                out[kind] = int(value) / 1e6
    return out


class PressureCollector(Collector):
    """``vx11_pressure_{waiting,stalled}_seconds_total{unit, resource}`` for ``units``
    (name -> cgroup path below ``root``; the unified mount point when ``root`` is None)."""

    def __init__(self, units: dict[str, str] | None = None, root: Path | str | None = None
                 ) -> None:
        self.units = dict(UNITS if units is None else units)
        self.root = Path(root) if root is not None else None

    def describe(self) -> Iterable[CounterMetricFamily]:
        return [*self._families()]

    def _families(self) -> tuple[CounterMetricFamily, CounterMetricFamily]:
        labels = ["unit", "resource"]
        return (CounterMetricFamily("vx11_pressure_waiting_seconds",
                                    "time at least one task of the unit waited for the "
                                    "resource (PSI some)", labels=labels),
                CounterMetricFamily("vx11_pressure_stalled_seconds",
                                    "time all tasks of the unit waited for the resource "
                                    "(PSI full)", labels=labels))

    def collect(self) -> Iterator[CounterMetricFamily]:
        waiting, stalled = self._families()
        root = self.root if self.root is not None else unified_root()
        if root is not None:
            for unit, rel in self.units.items():
                for resource in RESOURCES:
                    try:
                        text = (root / rel / f"{resource}.pressure").read_text()
                    except OSError:
                        continue  # not running, no PSI, or no such controller
                    totals = parse(text)
                    if "some" in totals:
                        waiting.add_metric([unit, resource], totals["some"])
                    if "full" in totals:
                        stalled.add_metric([unit, resource], totals["full"])
        yield waiting
        yield stalled
