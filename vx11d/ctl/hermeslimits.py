"""Hermes's memory, in the right order: its own RSS guard, then MemoryHigh=, then MemoryMax=.

``hermes.rss_limit`` (config) is what the worker watches itself: above it, it finishes
the request in flight, exits 75 and systemd restarts it. The unit's ``MemoryHigh=``
(cgroup v2 only: reclaim and throttling above it) and ``MemoryMax=`` (the kernel's OOM
killer above it) must sit above the guard, or the kernel acts first and a request dies
mid-answer. ``vx11ctl config check`` refuses a config that breaks that order.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ..confload import format_size

UNIT = "vx11-hermes.service"
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


def unit_memory(unit_dirs: tuple[str, ...] = UNIT_DIRS, *, ask_systemd: bool = True
                ) -> dict[str, int | None] | None:
    """The installed unit's limits: from systemd if it runs (drop-ins included), else
    from the first unit file found and its drop-ins; None when Hermes is not installed."""
    r = None
    try:
        if ask_systemd:
            r = subprocess.run(["systemctl", "show", "-p", "MemoryHigh,MemoryMax,LoadState",
                                UNIT], capture_output=True, text=True, timeout=10,
                               check=False)
    except (OSError, subprocess.TimeoutExpired):
        r = None
    if r is not None and r.returncode == 0 and "LoadState=loaded" in r.stdout:
        props = dict(ln.split("=", 1) for ln in r.stdout.splitlines() if "=" in ln)
        return {k: _bytes(props.get(k, "")) for k in ("MemoryHigh", "MemoryMax")}
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
