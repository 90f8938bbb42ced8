"""Unit state as systemd reports it, over D-Bus (pystemd): the one reader madre, the
gateway's /health and ``vx11ctl status|doctor`` use.

Property names and values are systemd's D-Bus ones (``ActiveState``, ``NRestarts`` as an
int), decoded to ``str`` where the bus gives bytes. Bus failures raise
:class:`~vx11d.errors.SystemdError` (``raise ... from`` the pystemd error).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from .errors import SystemdError

log = logging.getLogger("vx11.units")

DEST = b"org.freedesktop.systemd1"
PATH = b"/org/freedesktop/systemd1"
MANAGER = b"org.freedesktop.systemd1.Manager"
UNIT_IFACE = b"org.freedesktop.systemd1.Unit"
SERVICE_IFACE = b"org.freedesktop.systemd1.Service"
TIMER_IFACE = b"org.freedesktop.systemd1.Timer"
PROPS_IFACE = b"org.freedesktop.DBus.Properties"
UNIT_PREFIX = b"/org/freedesktop/systemd1/unit"


_KIND_IFACE = {"service": (SERVICE_IFACE,), "timer": (TIMER_IFACE,)}


def text(v: Any) -> Any:
    """A D-Bus value with its bytes decoded (also inside lists and tuples)."""
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, list):
        return [text(x) for x in v]
    if isinstance(v, tuple):
        return tuple(text(x) for x in v)
    return v


def usec_time(v: Any) -> float | None:
    """A ``...USec`` wall-clock property (microseconds since the epoch) in epoch seconds;
    None for "never"/"not scheduled" (systemd gives 0 or UINT64_MAX)."""
    if not isinstance(v, int) or v <= 0 or v >= 2**63:
        return None
    return v / 1e6


def decode(d: dict) -> dict[str, Any]:
    """A ``GetAll`` answer (or a ``PropertiesChanged`` body) with names and values as text."""
    return {text(k): text(v) for k, v in d.items()}


def lean_pystemd() -> None:
    """Let ``pystemd``'s C binding import without the package's high-level API.

    ``pystemd/__init__`` (and ``pystemd.systemd1``'s) import the object API, which loads
    lxml for D-Bus introspection: ~7 MB of RSS in every process. vx11d uses only
    ``dbuslib``, ``dbusexc`` and the unit property signatures, so a daemon's wiring calls
    this first: both packages are made from their specs without running their
    ``__init__``; their submodules import as usual. A no-op once pystemd is imported.
    """
    import importlib.util
    import sys

    if "pystemd" in sys.modules:
        return
    for name in ("pystemd", "pystemd.systemd1"):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.submodule_search_locations is None:
            return  # not installed: the import itself says so, later
        mod = sys.modules[name] = importlib.util.module_from_spec(spec)
        if "." in name:
            setattr(sys.modules["pystemd"], name.rsplit(".", 1)[1], mod)


def unit_path(name: str) -> bytes:
    """A unit's D-Bus object path, escaped as systemd does (``sd_bus_path_encode``)."""
    from pystemd.dbuslib import path_encode

    return path_encode(UNIT_PREFIX, name.encode())


def open_bus() -> Any:
    """A connection to the system bus (a pystemd ``DBus``); close it when done."""
    from pystemd.dbuslib import DBus

    try:
        bus = DBus()
        bus.open()
    except Exception as e:  # pystemd raises DBusError subclasses and SystemError
        raise SystemdError(f"cannot connect to systemd over D-Bus: {e}") from e
    return bus


def read(bus: Any, name: str, *, load: bool = False) -> dict[str, Any] | None:
    """The properties of unit ``name`` (Unit, plus Service or Timer for one).

    ``load=False``: only a unit systemd has loaded (``GetUnit``, then ``GetAll`` per
    interface); None when it is not loaded or was collected meanwhile.
    ``load=True``: as ``systemctl show`` does, ``GetAll`` on the unit's path in ONE
    round trip (an empty interface name: every interface), which loads the unit if
    needed; a unit with no file comes back with ``LoadState`` ``not-found``."""
    from pystemd.dbusexc import DBusBaseError, DBusNoSuchUnitError
    from pystemd.dbuslib import apply_signature

    if load:
        try:
            body = bus.call_method(DEST, unit_path(name), PROPS_IFACE, b"GetAll",
                                   apply_signature(b"s", [b""])).body
        except Exception as e:
            raise SystemdError(f"GetAll {name}: {e}") from e
        return decode(body)
    try:
        path = bus.call_method(DEST, PATH, MANAGER, b"GetUnit",
                               apply_signature(b"s", [name.encode()])).body
    except DBusNoSuchUnitError:
        return None
    except Exception as e:
        raise SystemdError(f"GetUnit {name}: {e}") from e
    out: dict[str, Any] = {}
    for iface in (UNIT_IFACE, *_KIND_IFACE.get(name.rpartition(".")[2], ())):
        try:
            body = bus.call_method(DEST, path, PROPS_IFACE, b"GetAll",
                                   apply_signature(b"s", [iface])).body
        except DBusBaseError as e:
            # collected between GetUnit and GetAll
            log.debug("GetAll %s on %s: %s", iface, name, e)
            return out or None
        out.update(decode(body))
    return out


def read_all(names: Iterable[str], *, load: bool = False) -> dict[str, dict[str, Any] | None]:
    """:func:`read` of each unit of ``names`` on one bus connection opened for it."""
    bus = open_bus()
    try:
        return {n: read(bus, n, load=load) for n in names}
    finally:
        bus.close()
