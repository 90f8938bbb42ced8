"""A small adapter over pystemd: the few systemd calls madre makes (the fake unit tests
use is ``tests/fake_systemd.py``).

Two bus connections: ``ctl`` for method calls, ``mon`` subscribed to the manager's
signals (``Subscribe`` + matches on ``PropertiesChanged``, ``JobRemoved``,
``UnitRemoved``). madre puts ``fileno()`` in its event loop and calls :meth:`drain`
when it is readable, getting back :class:`Change` records for ``vx11-hija-*`` and
watched units. Property names are D-Bus names (``RuntimeMaxUSec``): pystemd silently
ignores a wrong one, so madre reads every property back after a start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import SystemdError
from ..units import (
    DEST,
    MANAGER,
    PATH,
    PROPS_IFACE,
    SERVICE_IFACE,
    UNIT_IFACE,
    UNIT_PREFIX,
    decode,
    open_bus,
    read,
    text,
)

log = logging.getLogger("vx11.madre")

HIJA_PATH_PREFIX = UNIT_PREFIX + b"/vx11_2dhija_2d"  # unit_path("vx11-hija-")


@dataclass
class Change:
    """What a signal told us about one unit (merged Unit and Service properties)."""

    unit: str
    props: dict[str, Any] = field(default_factory=dict)
    removed: bool = False


class SystemdClient(Protocol):
    """What madre needs from systemd."""

    def fileno(self) -> int: ...
    def drain(self) -> list[Change]: ...
    def start_transient(self, name: str, props: dict[str, Any]) -> None: ...
    def start(self, name: str) -> None: ...
    def stop(self, name: str) -> None: ...
    def properties(self, name: str) -> dict[str, Any] | None: ...
    def readback(self, name: str) -> dict[str, Any] | None: ...
    def load_state(self, name: str) -> str: ...
    def list_units(self, pattern: str) -> list[tuple[str, str, str]]: ...
    def last_result(self, name: str, since: float = 0.0) -> dict[str, Any] | None: ...
    def close(self) -> None: ...


# D-Bus signatures pystemd 0.15 does not know (from systemd's dbus-execute.c).
EXTRA_SIGNATURES = {"RestrictSUIDSGID": b"b", "CapabilityBoundingSet": b"t",
                    "ProtectKernelLogs": b"b", "ProtectHostname": b"b",
                    "RestrictNamespaces": b"t", "RestrictAddressFamilies": b"(bas)",
                    "ProtectClock": b"b", "ProtectProc": b"s", "ProcSubset": b"s",
                    "UMask": b"u", "SystemCallErrorNumber": b"i",
                    "ExecStopPostEx": b"a(sasas)"}


def signature_of(prop: str) -> bytes:
    """The D-Bus signature of a unit property; SystemdError for an unknown name."""
    from pystemd.systemd1.unit_signatures import KNOWN_UNIT_SIGNATURES

    sig = KNOWN_UNIT_SIGNATURES.get(prop.encode()) or EXTRA_SIGNATURES.get(prop)
    if not isinstance(sig, bytes):
        raise SystemdError(f"unit property {prop} has no known D-Bus signature")
    return sig


class PystemdClient:
    """The real thing, on the system bus."""

    def __init__(self) -> None:
        self._pending: dict[str, Change] = {}
        self._dispatched = 0
        self.ctl = open_bus()
        self.mon = open_bus()
        try:
            # pystemd keeps only a C pointer to each callback and sets an attribute on
            # it: plain functions, referenced from self so they outlive the match.
            self._callbacks = (lambda msg, error=None, userdata=None: self._on_props(msg),
                               lambda msg, error=None, userdata=None: self._on_removed(msg))
            self.mon.match_signal(DEST, None, PROPS_IFACE, b"PropertiesChanged",
                                  self._callbacks[0])
            self.mon.match_signal(DEST, PATH, MANAGER, b"UnitRemoved", self._callbacks[1])
            self.mon.call_method(DEST, PATH, MANAGER, b"Subscribe", [])
        except Exception as e:  # pystemd raises DBusError subclasses and SystemError
            raise SystemdError(f"cannot connect to systemd over D-Bus: {e}") from e

    # --- signals -------------------------------------------------------------------
    def fileno(self) -> int:
        return self.mon.get_fd()

    def _on_props(self, msg: Any) -> None:
        from pystemd.dbuslib import path_decode

        self._dispatched += 1
        # The match takes every unit's PropertiesChanged (D-Bus matches have no path
        # prefix); only hija units matter. Look at the path (a header) before decoding
        # the body: other units' signals (dozens per start/stop) then cost almost nothing.
        path = msg.get_path()
        if not path or not path.startswith(HIJA_PATH_PREFIX):
            return
        msg.process_reply(False)
        name = path_decode(path, UNIT_PREFIX).decode(errors="replace")
        if not name.startswith("vx11-hija-"):
            return
        iface, changed = msg.body[0], msg.body[1]
        if iface not in (UNIT_IFACE, SERVICE_IFACE):
            return
        ch = self._pending.setdefault(name, Change(name))
        ch.props.update(decode(changed))

    def _on_removed(self, msg: Any) -> None:
        self._dispatched += 1
        msg.process_reply(False)
        name = text(msg.body[0])
        if name.startswith("vx11-"):
            self._pending.setdefault(name, Change(name)).removed = True

    def drain(self) -> list[Change]:
        """Process every queued bus message; the changes seen, in arrival order.

        sd_bus_process() hands back no message when it dispatched one to a match
        callback, and it may already have read several messages off the socket (so the
        fd stops being readable): keep calling it until a few calls in a row did
        nothing, or messages would wait for the next tick."""
        idle = 0
        try:
            while idle < 3:
                before = self._dispatched
                m = self.mon.process()
                if m.is_empty() and self._dispatched == before:
                    idle += 1
                else:
                    idle = 0
        except Exception as e:
            raise SystemdError(f"D-Bus signal processing failed: {e}") from e
        out = list(self._pending.values())
        self._pending.clear()
        return out

    # --- calls ---------------------------------------------------------------------
    def _call(self, path: bytes, iface: bytes, method: bytes, args: list) -> Any:
        try:
            return self.ctl.call_method(DEST, path, iface, method, args).body
        except Exception as e:
            raise SystemdError(f"{method.decode()}: {e}") from e

    def start_transient(self, name: str, props: dict[str, Any]) -> None:
        from pystemd.dbuslib import apply_signature

        args = apply_signature(b"ss", [name.encode(), b"fail"])
        args += [(ord(b"a"), b"(sv)")]
        for key, value in props.items():
            sig = signature_of(key)
            args += [(ord(b"r"), b"sv"), (ord(b"s"), key.encode()), (ord(b"v"), sig)]
            args += apply_signature(sig, [value])
            args += [(-1, None), (-1, None)]
        args += [(-1, None)]
        args += [(ord(b"a"), b"(sa(sv))"), (-1, None)]
        self._call(PATH, MANAGER, b"StartTransientUnit", args)

    def start(self, name: str) -> None:
        from pystemd.dbuslib import apply_signature

        self._call(PATH, MANAGER, b"StartUnit", apply_signature(b"ss", [name.encode(),
                                                                        b"replace"]))

    def stop(self, name: str) -> None:
        from pystemd.dbuslib import apply_signature

        self._call(PATH, MANAGER, b"StopUnit", apply_signature(b"ss", [name.encode(),
                                                                       b"replace"]))

    def properties(self, name: str) -> dict[str, Any] | None:
        """Unit and Service properties of a loaded unit; None if it is not loaded."""
        return read(self.ctl, name)

    def readback(self, name: str) -> dict[str, Any] | None:
        """Every property of a unit just started, in ONE round trip (``read`` with
        ``load``: no ``GetUnit`` first). systemd serves bus calls before it dispatches
        queued jobs, so each call made here delays the unit's own start: one call
        instead of three. None when the unit is already gone (collected: its end
        signals tell what happened)."""
        out = read(self.ctl, name, load=True)
        if out is None or out.get("LoadState") in (None, "not-found"):
            return None
        return out

    def load_state(self, name: str) -> str:
        """LoadState after asking systemd to load the unit (``not-found`` if absent)."""
        from pystemd.dbuslib import apply_signature

        path = self._call(PATH, MANAGER, b"LoadUnit", apply_signature(b"s", [name.encode()]))
        try:
            return text(self.ctl.get_property(DEST, path, UNIT_IFACE, b"LoadState", b"s"))
        except Exception as e:
            raise SystemdError(f"LoadState {name}: {e}") from e

    def list_units(self, pattern: str) -> list[tuple[str, str, str]]:
        """(name, ActiveState, SubState) of loaded units matching ``pattern``."""
        from pystemd.dbuslib import apply_signature

        body = self._call(PATH, MANAGER, b"ListUnitsByPatterns",
                          apply_signature(b"asas", [[], [pattern.encode()]]))
        return [(text(u[0]), text(u[3]), text(u[4])) for u in body]

    def last_result(self, name: str, since: float = 0.0) -> dict[str, Any] | None:
        """How a unit systemd no longer knows ended, from what PID 1 logged about it
        this boot (``Result``, ``ExecMainStatus``, ``InactiveEnterTimestamp`` as the
        unit would have shown them); None when the journal holds no end for it. Entries
        before ``since`` (the row's start, epoch seconds) are skipped; with ``since``,
        ``{"NeverStarted": True}`` when PID 1 logged nothing at all about the unit,
        ``{"EndNotLogged": True}`` when it logged the unit but no end (yet)."""
        return journal_end(name, since)

    def close(self) -> None:
        from pystemd.dbusexc import DBusBaseError

        for bus in (getattr(self, "mon", None), getattr(self, "ctl", None)):
            if bus is not None:
                try:
                    bus.close()
                except DBusBaseError as e:  # closing a dead bus is not worth a crash
                    log.debug("closing bus: %s", e)


UNIT_SUCCESS = "7ad2d189f7e94e70a38c781354912448"  # "Deactivated successfully."
UNIT_FAILURE_RESULT = "d9b373ed55a64feb8242e02dbe79a49c"  # "Failed with result '...'"
UNIT_PROCESS_EXIT = "98e322203f7a4ed290d09fe03c09fe15"  # "Main process exited, ..."


def journal_end(name: str, since: float = 0.0) -> dict[str, Any] | None:
    """The end of ``name`` as systemd logged it (see :meth:`PystemdClient.last_result`)."""
    try:
        from systemd import journal as sdj

        reader = sdj.Reader()
    except (ImportError, OSError) as e:
        raise SystemdError(f"cannot open the journal: {e}") from e
    out: dict[str, Any] = {}
    seen = False
    try:
        reader.add_match(UNIT=name, _PID="1")
        if since > 0:  # (no this_boot(): ProcSubset=pid hides the boot id)
            reader.seek_realtime(since - 1)
        for entry in reader:
            seen = True
            mid = entry.get("MESSAGE_ID")
            mid = getattr(mid, "hex", str(mid or ""))
            if mid == UNIT_PROCESS_EXIT:
                try:
                    out["ExecMainStatus"] = int(entry.get("EXIT_STATUS", 0))
                except (TypeError, ValueError):
                    out["ExecMainStatus"] = None
            elif mid in (UNIT_SUCCESS, UNIT_FAILURE_RESULT):
                out["Result"] = str(entry.get("UNIT_RESULT") or "success")
                out["ActiveState"] = "inactive" if mid == UNIT_SUCCESS else "failed"
                ts = entry.get("__REALTIME_TIMESTAMP")
                if ts is not None:
                    out["InactiveEnterTimestamp"] = int(ts.timestamp() * 1e6)
    except OSError as e:
        raise SystemdError(f"reading the journal for {name}: {e}") from e
    finally:
        reader.close()
    if "Result" in out:
        return out
    if seen:  # PID 1 logged the unit, not (yet) its end: journald may lag a collect
        return {"EndNotLogged": True}
    return {"NeverStarted": True} if since > 0 else None
