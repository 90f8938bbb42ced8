"""Text a person reads: times as ISO 8601 or relative, durations with units, no reprs.

Structured journal fields and ``--json`` stay machine-readable (epoch seconds); these
helpers are for the message text, STATUS lines and CLI output only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


def iso(ts: float | None) -> str:
    """``2026-12-01T00:41:07Z`` (UTC, whole seconds); ``-`` for no time."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def api_time(ts: float | None) -> str | None:
    """The API's time: ISO 8601 UTC to the millisecond, ``2026-12-01T00:41:07.250Z``;
    None stays None (JSON null). See docs/gateway.md, "Times"."""
    if ts is None:
        return None
    return datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def with_times(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` plus, for each ``X_at`` (epoch seconds), ``X`` as :func:`api_time`: the
    epoch fields keep their meaning for existing clients (deprecated)."""
    out = dict(row)
    for k, v in row.items():
        if k.endswith("_at") and (v is None or isinstance(v, int | float)):
            out[k[:-3]] = api_time(v)
    return out


def duration(seconds: float) -> str:
    """``950ms``, ``12s``, ``3m 20s``, ``2h 5m``, ``3d 4h`` (two units at most)."""
    s = abs(float(seconds))
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 60:
        return f"{s:.0f}s" if s >= 10 or s == int(s) else f"{s:.1f}s"
    for big, bn, small, sn in ((86400, "d", 3600, "h"), (3600, "h", 60, "m"), (60, "m", 1, "s")):
        if s >= big:
            whole, rest = divmod(int(s), big)
            part = rest // small
            return f"{whole}{bn} {part}{sn}" if part else f"{whole}{bn}"
    return f"{s:.0f}s"


def relative(ts: float | None, now: float | None = None) -> str:
    """``in 12s`` or ``3m ago`` from now; ``never`` for no time."""
    if ts is None:
        return "never"
    delta = float(ts) - (time.time() if now is None else now)
    return f"in {duration(delta)}" if delta >= 0 else f"{duration(delta)} ago"


def when(ts: float | None, now: float | None = None) -> str:
    """``2026-12-01T00:41:07Z (in 12s)``."""
    return "-" if ts is None else f"{iso(ts)} ({relative(ts, now)})"


def value(key: str, v: Any, now: float | None = None) -> str:
    """One value for a person: times for ``*_at`` keys, plain text for the rest."""
    if key.endswith("_at") and isinstance(v, int | float):
        return when(v, now)
    if key.endswith("_s") and isinstance(v, int | float):
        return duration(v)
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, Mapping):
        return counts(v)
    if isinstance(v, list | tuple | set):
        return ", ".join(str(x) for x in v) or "none"
    return str(v)


def fields(cols: Mapping[str, Any], now: float | None = None) -> str:
    """``pid 123, expires_at 2026-…Z (in 5s)``: the set values, None left out."""
    return ", ".join(f"{k.replace('_', ' ')} {value(k, v, now)}" for k, v in cols.items()
                     if v is not None and v != "")


def counts(d: Mapping[str, Any], empty: str = "none") -> str:
    """``1 expired, 2 running``: a count mapping as words, sorted by key."""
    return ", ".join(f"{v} {k}" for k, v in sorted(d.items())) or empty


def plural(n: int, noun: str) -> str:
    """``1 hija``, ``2 hijas``, ``0 events``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def size(n: float) -> str:
    """``512 B``, ``3.2 KiB``, ``1.5 GiB``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
