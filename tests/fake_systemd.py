"""An in-memory systemd for madre's unit and integration tests (the OS boundary faked).

It implements :class:`vx11d.madre.systemd.SystemdClient`: transient units, their states
and the change signals madre would receive, plus helpers (``end``) a test drives.
"""

from __future__ import annotations

import fnmatch
import os
from typing import Any

from vx11d.errors import SystemdError
from vx11d.madre.systemd import Change
from vx11d.units import text as _s


class FakeSystemd:
    """An in-memory systemd for unit tests: units, their states and queued signals."""

    def __init__(self, *, ignore: tuple[str, ...] = ()) -> None:
        self.units: dict[str, dict[str, Any]] = {}
        self.changes: list[Change] = []
        self.calls: list[tuple[str, str]] = []
        self.ignore = ignore  # property names "silently ignored" (the pystemd pitfall)
        self.installed: set[str] = set()
        self.fail_start: set[str] = set()
        self.fail_readback = False
        self.results: dict[str, dict[str, Any]] = {}  # what "the journal" says of ended units
        self._pid = 1000
        self._r, self._w = os.pipe()

    def fileno(self) -> int:
        return self._r

    def drain(self) -> list[Change]:
        out, self.changes = self.changes, []
        return out

    def _emit(self, name: str, removed: bool = False, **props: Any) -> None:
        self.changes.append(Change(name, dict(props), removed))

    def start_transient(self, name: str, props: dict[str, Any]) -> None:
        self.calls.append(("start_transient", name))
        if name in self.units:
            raise SystemdError(f"StartTransientUnit: unit {name} already exists")
        if name in self.fail_start:
            raise SystemdError(f"StartTransientUnit: {name} refused")
        stored = {k: _s(v) for k, v in props.items() if k not in self.ignore}
        self._pid += 1
        stored.update(ActiveState="active", SubState="running", MainPID=self._pid,
                      Result="success", ExecMainStatus=0, ExecMainCode=0, LoadState="loaded")
        self.units[name] = stored
        self._emit(name, ActiveState="active", SubState="running", MainPID=self._pid)

    def end(self, name: str, result: str = "timeout", status: int = 15, *,
            collect: bool = True, code: int = 2, exit_at: float | None = None) -> None:
        """Test helper: the unit ends the way systemd would report it (``code``: how the
        main process ended, 1 exited / 2 killed; ``exit_at``: when, epoch seconds)."""
        u = self.units[name]
        u.update(ActiveState="failed" if result != "success" else "inactive",
                 SubState="dead", Result=result, ExecMainStatus=status, MainPID=0)
        when = {"ExecMainExitTimestamp": int(exit_at * 1e6)} if exit_at else {}
        self._emit(name, Result=result, ExecMainStatus=status, ExecMainCode=code, MainPID=0,
                   **when)
        self._emit(name, ActiveState=u["ActiveState"], SubState="dead",
                   InactiveEnterTimestamp=0)
        if collect:
            del self.units[name]
            self.results[name] = {"Result": result, "ExecMainStatus": status,
                                  "ActiveState": u["ActiveState"]}
            self._emit(name, removed=True)

    def start(self, name: str) -> None:
        self.calls.append(("start", name))
        self.units[name] = {"ActiveState": "active", "SubState": "running", "MainPID": 1,
                            "LoadState": "loaded"}

    def stop(self, name: str) -> None:
        self.calls.append(("stop", name))
        if name.startswith("vx11-hija-") and name in self.units:
            self.end(name, result="success", status=15)
        elif name in self.units:
            self.units[name].update(ActiveState="inactive", SubState="dead")

    def properties(self, name: str) -> dict[str, Any] | None:
        u = self.units.get(name)
        return dict(u) if u is not None else None

    def readback(self, name: str) -> dict[str, Any] | None:
        self.calls.append(("readback", name))
        if self.fail_readback:
            raise SystemdError(f"GetAll {name}: Connection timed out")
        return self.properties(name)

    def load_state(self, name: str) -> str:
        return "loaded" if name in self.installed or name in self.units else "not-found"

    def list_units(self, pattern: str) -> list[tuple[str, str, str]]:
        return [(n, u["ActiveState"], u["SubState"]) for n, u in self.units.items()
                if fnmatch.fnmatch(n, pattern)]

    def last_result(self, name: str, since: float = 0.0) -> dict[str, Any] | None:
        r = self.results.get(name)
        return dict(r) if r is not None else None

    def close(self) -> None:
        os.close(self._r)
        os.close(self._w)
