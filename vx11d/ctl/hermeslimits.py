"""Hermes's memory, in the right order: its own RSS guard, then MemoryHigh=, then MemoryMax=.

``hermes.rss_limit`` (config) is what the worker watches itself: above it, it finishes
the request in flight, exits 75 and systemd restarts it. The unit's ``MemoryHigh=``
(cgroup v2 only: reclaim and throttling above it) and ``MemoryMax=`` (the kernel's OOM
killer above it) must sit above the guard, or the kernel acts first and a request dies
mid-answer. ``vx11ctl config check`` refuses a config that breaks that order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import units
from ..confload import format_size
from ..errors import SystemdError

UNIT = "vx11-hermes.service"
UINT64_MAX = 2**64 - 1  # "infinity" in a unit's D-Bus memory properties
UNIT_DIRS = ("/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system",
             "/lib/systemd/system")


def _bytes(value: str) -> int | None:
    """A unit's memory setting (``6G``, ``5800M``, ``infinity``, bytes) in bytes."""
    v = value.strip()
    if not v or v == "infinity":
        return None
    mult = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    if v[-1].upper() in mult:
        return int(float(v[:-1]) * mult[v[-1].upper()])
    return int(v) if v.isdigit() else None


def from_unit_text(text: str) -> dict[str, int | None]:
    """MemoryHigh/MemoryMax from a unit file's text (the last assignment wins)."""
    out: dict[str, int | None] = {"MemoryHigh": None, "MemoryMax": None}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key in out:
            out[key] = _bytes(value)
    return out


def from_properties(props: dict[str, Any]) -> dict[str, int | None]:
    """MemoryHigh/MemoryMax from the unit's D-Bus properties (bytes; ``infinity`` is
    UINT64_MAX there)."""
    out: dict[str, int | None] = {}
    for k in ("MemoryHigh", "MemoryMax"):
        v = props.get(k)
        out[k] = v if isinstance(v, int) and 0 < v < UINT64_MAX else None
    return out


def unit_memory(unit_dirs: tuple[str, ...] = UNIT_DIRS, *, ask_systemd: bool = True
                ) -> dict[str, int | None] | None:
    """The installed unit's limits: from systemd over D-Bus if it runs (drop-ins
    included), else from the first unit file found and its drop-ins; None when Hermes
    is not installed."""
    if ask_systemd:
        try:
            props = units.read_all([UNIT], load=True)[UNIT] or {}
        except SystemdError:
            props = {}  # no systemd here (a build host, a container): read the files
        if props.get("LoadState") == "loaded":
            return from_properties(props)
    for d in unit_dirs:
        f = Path(d) / UNIT
        if f.is_file():
            text = f.read_text()
            for dropin in sorted((Path(d) / f"{UNIT}.d").glob("*.conf")):
                text += "\n" + dropin.read_text()
            return from_unit_text(text)
    return None


def problems(rss_limit: int, limits: dict[str, int | None]) -> list[str]:
    """What is out of order (empty: the RSS guard acts first)."""
    out = []
    high, hard = limits.get("MemoryHigh"), limits.get("MemoryMax")
    if hard is not None and rss_limit >= hard:
        out.append(f"hermes.rss_limit ({format_size(rss_limit)}) is not below {UNIT}'s "
                   f"MemoryMax= ({format_size(hard)}): the kernel would kill Hermes before "
                   "its RSS guard acts; lower hermes.rss_limit or raise MemoryMax= in a "
                   "drop-in (systemctl edit vx11-hermes)")
    if high is not None and rss_limit >= high:
        out.append(f"hermes.rss_limit ({format_size(rss_limit)}) is not below {UNIT}'s "
                   f"MemoryHigh= ({format_size(high)}): reclaim would throttle Hermes before "
                   "its RSS guard acts; keep MemoryHigh= between the two")
    if high is not None and hard is not None and high > hard:
        out.append(f"{UNIT}: MemoryHigh= ({format_size(high)}) above MemoryMax= "
                   f"({format_size(hard)}) never applies")
    return out
