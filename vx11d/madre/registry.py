"""The hija registry: requests become transient units; unit ends become DB records.

    requested --start--> starting --unit active--> running --RuntimeMaxUSec--> expired
        |                   |                         |---exit 0--------------> exited
        |                   |                         |---exit != 0 / crash---> failed
        |                   |                         |---kernel OOM kill-----> oom
        |                   +--StartTransientUnit refused / property lost--> failed
        +--stop requested before start----------------------------------------> stopped
    running|starting --stop request--> stopped;  --backstop (past expiry+grace)--> expired
    starting|running with no unit at reconcile ---------------------------------> lost

Every transition is one DB transaction that updates ``spawner_hijas`` and appends an
``events`` row, and one journal line (``VX11_EVENT=hija_*``, ``VX11_HIJA_ID``).
The row is written ``starting`` before the unit is started, so after a crash at any
point a unit never exists without a row; reconcile settles rows whose unit is gone.
"""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from .. import journal, textfmt
from ..config import Config, HijaTemplate
from ..db import Database, record_event
from ..degraded import DB_FAULTS, WriteHealth
from ..errors import DbError, DbIntegrityError, InputError, SystemdError
from ..hijas import (
    ENDED,
    LIVE,
    SETTLED,
    STARTED,
    HijaStatus,
    build_argv,
    check_args,
)
from . import hardening, memory, ports
from .systemd import Change, SystemdClient

log = logging.getLogger("vx11.madre")

SLICE = "vx11-hijas.slice"
END_LOG_WAIT = 60.0  # how long reconcile waits for PID 1's end lines of a gone unit
EVENT_OF = {HijaStatus.STARTING: "hija_spawned", HijaStatus.RUNNING: "hija_running",
            HijaStatus.EXPIRED: "hija_expired", HijaStatus.EXITED: "hija_exited",
            HijaStatus.FAILED: "hija_failed", HijaStatus.STOPPED: "hija_stopped",
            HijaStatus.LOST: "hija_lost", HijaStatus.OOM: "hija_oom_killed"}


class PropertyNotSet(SystemdError):
    """A unit property did not stick (wrong name or value silently ignored)."""


@dataclass
class Tracked:
    """What madre keeps in memory about one live hija unit."""

    hija_id: str
    ttl: float
    t0: float  # monotonic, when madre began starting it
    props: dict[str, Any] = field(default_factory=dict)
    seen_active: bool = False
    running: bool = False
    stop_as: str | None = None  # status to record when madre itself stopped it


CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3  # ExecMainCode: how the main process ended


def _killed_by_sigterm(props: dict[str, Any]) -> bool:
    """The main process ended by SIGTERM (ExecMainCode CLD_KILLED, status 15)."""
    return props.get("ExecMainCode") == CLD_KILLED and props.get("ExecMainStatus") == 15


def how_it_ended(props: dict[str, Any]) -> str:
    """How the main process ended, in words: ``exited with status 1``, ``stopped with
    SIGTERM``, ``killed by SIGKILL``; "" when systemd did not say. (ExecMainStatus is
    an exit status only for CLD_EXITED; for a signal it is the signal's number.)"""
    code, st = props.get("ExecMainCode"), props.get("ExecMainStatus")
    if not isinstance(st, int):
        return ""
    if code == CLD_EXITED:
        return f"exited with status {st}"
    if code in (CLD_KILLED, CLD_DUMPED):
        try:
            name = signal.Signals(st).name
        except ValueError:
            name = f"signal {st}"
        if code == CLD_DUMPED:
            return f"killed by {name} (core dumped)"
        return f"stopped with {name}" if st == signal.SIGTERM else f"killed by {name}"
    return ""


@dataclass
class Held:
    """A transition madre saw but could not record yet (the DB refused the write)."""

    hija_id: str
    status: str
    only_from: tuple[str, ...]
    cols: dict[str, Any]
    row: dict[str, Any]  # the row after the transition, to re-create a row the DB lost


def unit_properties(cfg: Config, tpl: HijaTemplate, hija_id: str, argv: list[str],
                    ttl: float, port: int | None, template: str = "") -> dict[str, Any]:
    """The transient unit's properties, by their D-Bus names."""
    # the id and template in the unit let reconcile re-create a row a restored DB lacks
    env = [f"VX11_HIJA_ID={hija_id}".encode()]
    if template:
        env.append(f"VX11_HIJA_TEMPLATE={template}".encode())
    if port is not None:
        env.append(f"PORT={port}".encode())
    props: dict[str, Any] = {
        "Description": f"vx11 hija {hija_id}".encode(),
        "Type": b"exec",
        "ExecStart": [(argv[0].encode(), [a.encode() for a in argv], False)],
        "Slice": SLICE.encode(),
        "RuntimeMaxUSec": int(ttl * 1e6),
        "CollectMode": b"inactive-or-failed",
        "KillMode": b"control-group",
        "TimeoutStopUSec": int(cfg.madre.stop_timeout * 1e6),
        "Environment": env,
        "MemoryMax": int(tpl.memory_max),
        "CPUQuotaPerSecUSec": int(tpl.cpu_quota_percent * 10_000),
        "TasksMax": int(tpl.tasks_max),
        "WorkingDirectory": b"/",
        **hardening.properties(tpl.sandboxing, tpl.needs_port),
        # Stopped before madre at shutdown, so madre records each end as it happens.
        "After": [b"vx11-madre.service"],
    }
    key, value = memory.probe_property(memory.ends_dir(cfg.gateway.madre_wake_socket),
                                       hija_id)
    props[key] = value
    if cfg.madre.hija_user and not tpl.dynamic_user:
        # a dedicated static user: no per-start UID allocation and no implied mount
        # namespace (see docs/madre.md for what that trades away)
        props["User"] = cfg.madre.hija_user.encode()
    else:
        props["DynamicUser"] = True
    return props


def _int_or_none(v: Any) -> int | None:
    try:
        n = int(v)
    except (TypeError, ValueError):
        return None
    return n if 0 < n < 1 << 62 else None


# Properties read back after start (name -> how to compare with what was asked).
CHECKED = ("RuntimeMaxUSec", "CollectMode", "KillMode", "TimeoutStopUSec", "MemoryMax",
           "CPUQuotaPerSecUSec", "TasksMax", "NoNewPrivileges", "Slice", "Environment",
           "DynamicUser", "User", "ProtectSystem", "PrivateTmp", "RestrictSUIDSGID",
           "CapabilityBoundingSet", "ProtectHome", "PrivateDevices", "PrivateNetwork",
           "RestrictNamespaces", "ProtectProc", "PrivateUsers", "UMask")


def check_readback(asked: dict[str, Any], got: dict[str, Any]) -> list[str]:
    """Names of the properties whose value systemd does not report back as asked."""
    bad = []
    for name in CHECKED:
        if name not in asked:
            continue
        want = asked[name]
        want = want.decode() if isinstance(want, bytes) else want
        if isinstance(want, list):
            want = [w.decode() if isinstance(w, bytes) else w for w in want]
        have = got.get(name)
        if name == "Environment":
            ok = isinstance(have, list) and all(w in have for w in want)
        else:
            ok = have == want
        if not ok:
            bad.append(f"{name} (asked {want!r}, systemd has {have!r})")
    return bad


class Registry:
    """Carries spawn and stop requests out and records how every hija ends."""

    def __init__(self, cfg: Config, db: Database, sd: SystemdClient, metrics: Any,
                 clock=time.time, health: WriteHealth | None = None) -> None:
        self.cfg, self.db, self.sd, self.m, self.clock = cfg, db, sd, metrics, clock
        self.earliest_expiry: float | None = None  # of the running hijas, at summary()
        self.health = health or WriteHealth("madre", CollectorRegistry(), log)
        self.ends_dir = memory.ends_dir(cfg.gateway.madre_wake_socket)
        self.tracked: dict[str, Tracked] = {}  # unit name -> Tracked
        # transitions seen while the DB refused writes, in the order they happened
        self.held: list[Held] = []
        # hija id -> its row as madre last knew it (live hijas and held ends), so a row
        # the DB lost (file deleted, restored from an older copy) can be re-created
        self.rows: dict[str, dict[str, Any]] = {}
        # hija id -> when reconcile first found its unit gone with no end logged yet
        self._end_awaited: dict[str, float] = {}
        # called (hija id, status) after a row committed running or an end state
        self.on_settled: Callable[[str, str], None] | None = None

    # --- transitions ---------------------------------------------------------------
    def _transition(self, hija_id: str, status: str, *, only_from: tuple[str, ...] = LIVE,
                    level: int = logging.INFO, **cols: Any) -> bool:
        """Move one row to ``status`` (if it is in ``only_from``), with its event.

        When the DB refuses the write (or earlier transitions still wait), the
        transition is held in order and recorded by :meth:`flush` once the DB takes
        writes again; it returns False then, as for a row not in ``only_from``."""
        now = self.clock()
        if status in ENDED:
            cols.setdefault("ended_at", now)
        row = {**self.rows.get(hija_id, {}), "status": status, **cols}
        if hija_id in self.rows:
            self.rows[hija_id] = row
        held = Held(hija_id, status, only_from, cols, row)
        if self.held or not self.health.due() or not self.health.writable:
            return self._hold(held, level, None)
        try:
            template = self.db.write(lambda c: _apply(c, held, restore=False))
        except DbIntegrityError:
            raise
        except DB_FAULTS as e:
            return self._hold(held, level, e)
        self.health.recovered()
        done = template is not False
        if done:
            self._recorded(held, level, str(template))
        return done

    def _hold(self, held: Held, level: int, e: DbError | None) -> bool:
        if e is not None:
            self.health.failed(e)
        self.held.append(held)
        self.m.held.set(len(self.held))
        self._log(held, level, " (not recorded yet: "
                  + (self.health.text(0).removeprefix("degraded: ")
                     or "earlier transitions pending") + ")",
                  str(held.row.get("template") or ""))
        return False

    def _log(self, held: Held, level: int, suffix: str, template: str) -> None:
        status, cols = held.status, held.cols
        said = status == HijaStatus.OOM or (status in ENDED and cols.get("reason"))
        if said:  # the reason says it all, in a sysadmin's words
            detail = str(cols.get("reason"))
        else:
            detail = textfmt.fields({k: v for k, v in cols.items()
                                     if k not in ("ended_at", "memory_max", "memory_peak")},
                                    self.clock())
        journal.event(log, EVENT_OF[status], ("hija %s %s: %s" if said else
                                              "hija %s %s%s") + suffix, held.hija_id, status,
                      detail if said else (f" ({detail})" if detail else ""),
                      level=level, hija_id=held.hija_id,
                      pid=cols.get("main_pid"), template=template or None,
                      memory_max=cols.get("memory_max"), memory_peak=cols.get("memory_peak"))

    def _recorded(self, held: Held, level: int, template: str, *,
                  logged: bool = False) -> None:
        status = held.status
        if not logged:
            self._log(held, level, "", template)
        if status in ENDED:
            self.m.ended.labels(template, status).inc()
            self.rows.pop(held.hija_id, None)
            memory.discard(self.ends_dir, held.hija_id)
        if self.on_settled is not None and status in SETTLED:
            self.on_settled(held.hija_id, status)

    def flush(self, *, restore: bool = False) -> int:
        """Record the held transitions (oldest first) in one write; how many were written.

        Also the probe that ends degraded mode: while degraded it writes a
        ``madre_db_recovered`` event even with nothing held. With ``restore`` (the DB
        file was replaced or re-created) every row madre knows that the DB lacks is
        re-created first, so no hija record is lost across a restore."""
        if not self.held and not self.health.degraded and not restore:
            return 0
        if not self.health.due():
            return 0
        batch = list(self.held)
        cause = self.health.cause
        live = [dict(r) for r in self.rows.values()] if restore else []

        def fn(c: sqlite3.Connection) -> list[tuple[Held, str | bool]]:
            created = sum(_insert_missing(c, r) for r in live)
            out = [(h, _apply(c, h, restore=True)) for h in batch]
            if cause is not None or created:
                record_event(c, "madre", "madre_db_recovered", cause=cause or "",
                             transitions=len(batch), rows_recreated=created)
            return out

        try:
            done = self.db.write(fn)
        except DB_FAULTS as e:
            self.health.failed(e)
            return 0
        del self.held[:len(batch)]
        self.m.held.set(len(self.held))
        for h, template in done:
            if template is not False:
                self._recorded(h, logging.INFO, str(template), logged=True)
        self.health.recovered(f"{len(batch)} held transition"
                              f"{'s' if len(batch) != 1 else ''} recorded" if batch else "")
        return len(batch)

    # --- requests ----------------------------------------------------------------------
    def process_requests(self, limit: int = 1000) -> int:
        """Start up to ``limit`` ``requested`` rows and carry out stop requests; how many
        requests were looked at (== limit: call again, more may wait)."""
        if self.held or not self.health.due() or not self.health.writable:
            return 0  # nothing new starts while madre cannot record what it starts
        rows = self.db.query("SELECT * FROM spawner_hijas WHERE status = ? "
                             "ORDER BY created_at LIMIT ?", (HijaStatus.REQUESTED, limit))
        for r in rows:
            try:
                self._spawn(r)
            except DbIntegrityError:
                raise
            except DB_FAULTS as e:  # not started: the row stays requested for a later pass
                self.health.failed(e)
                return 0
            except Exception as e:  # a poison request must not crash-loop madre
                log.exception("spawning hija %s failed", r["id"])
                self.tracked.pop(r["unit"], None)
                self._transition(r["id"], HijaStatus.FAILED,
                                 only_from=(HijaStatus.REQUESTED, HijaStatus.STARTING),
                                 reason=f"internal error: {e}"[:300], level=logging.ERROR)
        self.process_stops()
        return len(rows)

    def _spawn(self, r: sqlite3.Row) -> None:
        hid, unit = r["id"], r["unit"]
        t0 = time.monotonic()
        if r["stop_requested_at"] is not None:
            self._transition(hid, HijaStatus.STOPPED, only_from=(HijaStatus.REQUESTED,),
                             reason="stop requested before start")
            return
        tpl = self.cfg.madre.templates.get(r["template"])
        try:
            if tpl is None:
                raise InputError(f"template {r['template']!r} is no longer in the config")
            args = check_args(tpl, json.loads(r["args"] or "{}"))
            # every placeholder has a value (InputError names the one that has none)
            build_argv(tpl, args, 1 if tpl.needs_port else None)
        except (InputError, ValueError) as e:
            self._transition(hid, HijaStatus.FAILED, only_from=(HijaStatus.REQUESTED,),
                             reason=str(e), level=logging.WARNING)
            return
        first, last = self.cfg.madre.port_range
        ttl = float(r["ttl_s"])

        def to_starting(c: sqlite3.Connection) -> int | bool | None:
            port = ports.allocate(c, first, last) if tpl.needs_port else None
            now = self.clock()
            cur = c.execute("UPDATE spawner_hijas SET status = ?, port = ?, "
                            "started_at = ?, expires_at = ? WHERE id = ? AND "
                            "status = ?", (HijaStatus.STARTING, port, now, now + ttl, hid,
                                           HijaStatus.REQUESTED))
            if cur.rowcount != 1:
                return False
            record_event(c, "madre", "hija_spawned", subject=hid, status=HijaStatus.STARTING,
                         unit=unit, port=port, ttl_s=ttl, template=r["template"])
            self.rows[hid] = {**dict(r), "status": HijaStatus.STARTING, "port": port,
                              "started_at": now, "expires_at": now + ttl}
            return port

        try:
            port = self.db.write(to_starting)
            self.health.recovered()
        except ports.PortsExhausted as e:
            self._transition(hid, HijaStatus.FAILED, only_from=(HijaStatus.REQUESTED,),
                             reason=str(e), level=logging.WARNING)
            return
        if port is False:
            return
        port = port if tpl.needs_port else None
        journal.event(log, "hija_spawned", "hija %s starting as %s (template %s, ttl %s%s)",
                      hid, unit, r["template"], textfmt.duration(ttl),
                      f", port {port}" if port is not None else "", hija_id=hid)
        props = unit_properties(self.cfg, tpl, hid, build_argv(tpl, args, port), ttl, port,
                                r["template"])
        tr = Tracked(hid, ttl, t0)
        self.tracked[unit] = tr
        try:
            self.sd.start_transient(unit, props)
        except SystemdError as e:
            del self.tracked[unit]
            self._transition(hid, HijaStatus.FAILED, reason=f"systemd refused the unit: {e}",
                             level=logging.ERROR)
            return
        self.m.spawned.inc()
        try:
            got = self.sd.readback(unit)
        except SystemdError as e:  # unchecked properties: the unit must not run on
            got, bad = {}, [f"cannot read them back: {e}"]
        else:
            if got is None:
                return  # already ended and collected: the signals will tell how
            bad = check_readback(props, got)
        if bad:
            log.error("hija %s: unit properties did not stick: %s; stopping it", hid,
                      "; ".join(bad), extra={"VX11_EVENT": "hija_property_lost",
                                             "VX11_HIJA_ID": hid})
            tr.stop_as = HijaStatus.FAILED
            self._stop_unit(unit)
            self._transition(hid, HijaStatus.FAILED, reason="properties did not stick: "
                             + "; ".join(bad)[:500], level=logging.ERROR)
            self.tracked.pop(unit, None)
            return
        tr.props.update(got)
        self._observe(unit, tr)

    def process_stops(self) -> None:
        """Stop the live hijas someone asked to stop (DELETE, vx11ctl hijas stop)."""
        rows = self.db.query("SELECT * FROM spawner_hijas WHERE "
                             "stop_requested_at IS NOT NULL AND status IN "
                             "(?, ?)", STARTED)
        for r in rows:
            self.rows.setdefault(r["id"], dict(r))
            tr = self.tracked.get(r["unit"])
            if tr is not None and tr.stop_as is not None:
                continue
            if tr is None:
                tr = self.tracked[r["unit"]] = Tracked(r["id"], 0, time.monotonic())
            tr.stop_as = HijaStatus.STOPPED
            journal.event(log, "hija_stopping", "stopping hija %s on request", r["id"],
                          hija_id=r["id"])
            if not self._stop_unit(r["unit"]):
                self.tracked.pop(r["unit"], None)
                self._transition(r["id"], HijaStatus.STOPPED, reason="stop requested; unit gone")

    def _stop_unit(self, unit: str) -> bool:
        """StopUnit; False when the unit no longer exists."""
        try:
            self.sd.stop(unit)
            return True
        except SystemdError as e:
            if "not loaded" in str(e) or "NoSuchUnit" in str(e):
                return False
            log.warning("StopUnit %s failed: %s", unit, e)
            return True

    # --- signals -----------------------------------------------------------------------
    def on_changes(self, changes: list[Change]) -> None:
        """Apply what systemd signalled: running, ended, removed."""
        for ch in changes:
            tr = self.tracked.get(ch.unit)
            if tr is None:
                continue
            tr.props.update(ch.props)
            if ch.removed and not self._is_end(tr):
                # systemd also sends UnitRemoved for every unit on daemon-reload (it frees
                # and reloads them all): a unit that is still there has not ended.
                live = self._live_props(ch.unit)
                if live is not None:
                    tr.props.update(live)
                    continue
                # collected before we saw it end (should not happen; be safe)
                tr.props.setdefault("ActiveState", "inactive")
                tr.seen_active = True
            self._observe(ch.unit, tr, removed=ch.removed)

    def settle_before_exit(self, timeout: float = 2.0) -> int:
        """At madre's stop: record the ends of hijas systemd already stopped (at shutdown
        they stop first, being ordered After=madre) and leave the live ones running. The
        end signals may still be on their way through the bus: wait up to ``timeout``
        for them, then record what is left as stopped. Returns how many ended."""
        deadline = time.monotonic() + timeout
        before = len(self.tracked)
        while True:
            self.on_changes(self.sd.drain())
            gone = [u for u in list(self.tracked) if self._live_props(u) is None]
            if not gone or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for unit in gone:
            tr = self.tracked.pop(unit)
            self._transition(tr.hija_id, HijaStatus.STOPPED, only_from=STARTED,
                             reason=f"unit {unit} ended while madre was stopping (host "
                                    "shutting down?); its end signal did not arrive")
        return before - len(self.tracked)

    def _live_props(self, unit: str) -> dict[str, Any] | None:
        """The unit's properties if it is loaded and not ended, else None."""
        try:
            p = self.sd.properties(unit)
        except SystemdError as e:
            log.warning("could not re-read %s after UnitRemoved: %s", unit, e)
            return None
        if p is None or p.get("LoadState") == "not-found":
            return None
        if p.get("ActiveState") not in ("active", "activating", "reloading", "deactivating"):
            return None
        return p

    @staticmethod
    def _is_end(tr: Tracked) -> bool:
        state = tr.props.get("ActiveState")
        return state == "failed" or (state == "inactive" and tr.seen_active)

    def _observe(self, unit: str, tr: Tracked, removed: bool = False) -> None:
        state = tr.props.get("ActiveState")
        if state in ("active", "reloading", "deactivating"):
            tr.seen_active = True
        if state == "active" and not tr.running:
            tr.running = True
            cols: dict[str, Any] = {"main_pid": int(tr.props.get("MainPID") or 0) or None}
            enter = int(tr.props.get("ActiveEnterTimestamp") or 0)
            if enter and tr.ttl:
                cols["expires_at"] = enter / 1e6 + tr.ttl
            if self._transition(tr.hija_id, HijaStatus.RUNNING,
                                only_from=(HijaStatus.STARTING,), **cols):
                self.m.spawn_seconds.observe(time.monotonic() - tr.t0)
        if self._is_end(tr) or (removed and tr.seen_active):
            self._record_end(unit, tr)

    def _record_end(self, unit: str, tr: Tracked, note: str = "") -> None:
        self.tracked.pop(unit, None)
        result = str(tr.props.get("Result") or "")
        status_code = tr.props.get("ExecMainStatus")
        # When the hija's own process ended; its stop commands (the memory probe) run
        # after it, so the unit goes inactive a little later (seconds on a slow host).
        ended = int(tr.props.get("ExecMainExitTimestamp") or 0) \
            or int(tr.props.get("InactiveEnterTimestamp") or 0)
        expires = (self.rows.get(tr.hija_id) or {}).get("expires_at")
        stop_timed_out = (result == "timeout" and tr.props.get("ExecMainCode") == CLD_EXITED
                          and bool(ended) and expires is not None
                          and ended / 1e6 < float(expires) - 1.0)
        if tr.stop_as is not None:
            status = tr.stop_as
        elif stop_timed_out:
            # Result=timeout, but not RuntimeMaxSec=: the process exited by itself well
            # before its expiry and a stop command (TimeoutStopSec=) ran out of time.
            status = HijaStatus.EXITED if status_code == 0 else HijaStatus.FAILED
            note = note or "its stop commands ran past madre.stop_timeout"
        elif result == "timeout":
            status = HijaStatus.EXPIRED
        elif result == "success" and _killed_by_sigterm(tr.props):
            # SIGTERM is a clean exit for systemd: a "systemctl stop" of the unit or the
            # host shutting down (hijas are ordered After=madre, so madre sees that).
            status = HijaStatus.STOPPED
        elif result == "success":
            status = HijaStatus.EXITED
        else:
            status = HijaStatus.FAILED
        report = memory.read(self.ends_dir, tr.hija_id)
        if tr.stop_as is None and memory.is_oom(result, report):
            status = HijaStatus.OOM
        cols: dict[str, Any] = {"result": result or None, "exit_status": status_code}
        if ended:
            cols["ended_at"] = ended / 1e6
        if status == HijaStatus.STOPPED and tr.stop_as is None:
            cols["reason"] = "stopped by systemd (SIGTERM), not by madre: a systemctl stop " \
                             "or the host shutting down"
        limit = (report.limit if report else None) or _int_or_none(tr.props.get("MemoryMax"))
        if limit is not None:
            cols["memory_max"] = limit
        if report is not None and report.peak is not None:
            cols["memory_peak"] = report.peak
        how = how_it_ended(tr.props)
        if status == HijaStatus.EXPIRED and tr.stop_as:
            cols["reason"] = "stopped by madre's backstop after expiry"
        elif status == HijaStatus.EXPIRED:
            cols["reason"] = "reached its TTL" + (f", {how}" if how else "")
        elif status == HijaStatus.OOM:
            cols["reason"] = memory.oom_reason(report, limit, result, status_code)
        elif status == HijaStatus.FAILED:
            cols["reason"] = f"{how or 'ended'} (systemd result {result or 'unknown'})"
        elif status == HijaStatus.EXITED and how:
            cols["reason"] = how
        if note:
            cols["reason"] = f"{cols.get('reason') or 'ended'} ({note})"
        self._transition(tr.hija_id, status, only_from=STARTED,
                         level=logging.WARNING if status in (HijaStatus.FAILED, HijaStatus.OOM)
                         else logging.INFO,
                         **cols)

    # --- safety nets -------------------------------------------------------------------
    def backstop(self) -> None:
        """Stop hijas still alive past expires_at + backstop_grace (systemd should have)."""
        limit = self.clock() - self.cfg.madre.backstop_grace
        rows = self.db.query("SELECT * FROM spawner_hijas WHERE status = ? "
                             "AND expires_at < ?", (HijaStatus.RUNNING, limit))
        ending = {h.hija_id for h in self.held if h.status in ENDED}
        for r in rows:
            if r["id"] in ending:
                continue  # it ended; the DB has not been told yet
            self.rows.setdefault(r["id"], dict(r))
            tr = self.tracked.get(r["unit"])
            if tr is not None and tr.stop_as is not None:
                continue
            if tr is None:
                tr = self.tracked[r["unit"]] = Tracked(r["id"], 0, time.monotonic(),
                                                       seen_active=True, running=True)
            tr.stop_as = HijaStatus.EXPIRED
            journal.event(log, "hija_backstop", "hija %s outlived its expiry; stopping it",
                          r["id"], level=logging.WARNING, hija_id=r["id"])
            if not self._stop_unit(r["unit"]):
                self.tracked.pop(r["unit"], None)
                self._transition(r["id"], HijaStatus.EXPIRED, reason="backstop: unit already gone")

    def reconcile(self) -> dict[str, int]:
        """Make the DB and systemd agree: settle rows without units, stop units without rows."""
        fixed = {"lost": 0, "ended": 0, "adopted": 0, "orphans": 0, "recreated": 0}
        rows = self.db.query("SELECT * FROM spawner_hijas WHERE "
                             "status IN (?, ?)", STARTED)
        live_units = set()
        ending = {h.hija_id for h in self.held if h.status in ENDED}
        for r in rows:
            unit = r["unit"]
            live_units.add(unit)
            if r["id"] in ending:
                continue  # its end is held until the DB takes writes
            self.rows.setdefault(r["id"], dict(r))
            p = self.sd.properties(unit)
            if p is None or p.get("LoadState") == "not-found":
                # The unit may have ended and been collected while its end signals still
                # wait in the bus socket: apply them first, then settle what is left.
                # (_transition only moves a row that is still live.)
                self.on_changes(self.sd.drain())
                self.tracked.pop(unit, None)
                how = self._settle_gone(r)
                if how == "ended":  # its end as PID 1 logged it (OOM included)
                    fixed["ended"] += 1
                if how:  # ended, or its end not logged yet (asked again next time)
                    continue
                report = memory.read(self.ends_dir, r["id"])
                if report is not None and report.oom:
                    self._transition(r["id"], HijaStatus.OOM, only_from=STARTED,
                                     level=logging.WARNING, memory_max=report.limit,
                                     memory_peak=report.peak,
                                     reason=memory.oom_reason(report, report.limit,
                                                              "", "unknown (seen at reconcile)"))
                    continue
                if self._transition(r["id"], HijaStatus.LOST, only_from=STARTED,
                                    level=logging.WARNING, reason=f"unit {unit} gone at "
                                    f"reconcile (was {r['status']}), no end in the journal"):
                    fixed["lost"] += 1
                continue
            tr = self.tracked.get(unit)
            if tr is None:
                tr = self.tracked[unit] = Tracked(r["id"], float(r["ttl_s"]),
                                                  time.monotonic(),
                                                  running=r["status"] == HijaStatus.RUNNING)
                fixed["adopted"] += 1
            tr.props.update(p)
            if p.get("ActiveState") in ("inactive", "failed"):
                tr.seen_active = True
                fixed["ended"] += 1
            self._observe(unit, tr)
        for name, active, _sub in self.sd.list_units("vx11-hija-*"):
            if name in live_units or active not in ("active", "activating", "reloading"):
                continue
            hid = name.removeprefix("vx11-hija-").removesuffix(".service")
            if self._recreate(name, hid):
                fixed["recreated"] += 1
                continue
            self._stop_unit(name)
            try:
                self.db.event("madre", "hija_orphan_stopped", subject=hid, unit=name)
            except DB_FAULTS as e:
                self.health.failed(e)
            journal.event(log, "hija_orphan_stopped", "unit %s has no live DB row; stopped",
                          name, level=logging.WARNING, hija_id=hid)
            fixed["orphans"] += 1
        memory.sweep(self.ends_dir)
        if any(fixed.values()):
            log.info("reconcile: %s", ", ".join(f"{k} {v}" for k, v in fixed.items()),
                     extra={"VX11_EVENT": "hija_reconcile"})
        return fixed

    def _recreate(self, unit: str, hija_id: str) -> bool:
        """A running hija unit whose row the DB lacks altogether (the DB was restored
        from a backup older than the hija): re-create its row from what systemd knows
        (the id and template madre put in its environment, its TTL, start time, port,
        main PID, memory limit) and track it. False for a unit madre did not start or
        whose id has a row (an ended one: that unit is an orphan)."""
        p = self.sd.properties(unit)
        if not p or p.get("ActiveState") not in ("active", "activating", "reloading"):
            return False
        env = dict(str(e).partition("=")[::2] for e in p.get("Environment") or [])
        if env.get("VX11_HIJA_ID") != hija_id:
            return False
        if self.db.query("SELECT 1 FROM spawner_hijas WHERE id = ?", (hija_id,)):
            return False
        ttl = (_int_or_none(p.get("RuntimeMaxUSec")) or 0) / 1e6
        if ttl <= 0 or ttl > 1e9:
            return False  # no TTL: not a hija madre started
        started = (_int_or_none(p.get("ActiveEnterTimestamp")) or 0) / 1e6 or self.clock()
        mem = _int_or_none(p.get("MemoryMax"))
        row = {"id": hija_id, "template": env.get("VX11_HIJA_TEMPLATE") or "unknown",
               "ttl_s": ttl, "port": _int_or_none(env.get("PORT")), "unit": unit,
               "main_pid": _int_or_none(p.get("MainPID")) or None,
               "status": HijaStatus.RUNNING, "created_at": started, "started_at": started,
               "expires_at": started + ttl,
               "memory_max": mem if mem is not None and mem < 2**63 - 1 else None,
               "reason": "re-created from systemd at reconcile (the DB had no row)"}

        def fn(c: sqlite3.Connection) -> bool:
            try:
                return _insert_missing(c, row)
            except sqlite3.IntegrityError:  # its port is held by a row of the backup
                return _insert_missing(c, {**row, "port": None})

        if not self.db.write(fn):
            return False
        self.rows[hija_id] = row
        tr = self.tracked[unit] = Tracked(hija_id, ttl, time.monotonic() -
                                          max(0.0, self.clock() - started), running=True)
        tr.props.update(p)
        tr.seen_active = True
        return True

    def _settle_gone(self, r: sqlite3.Row) -> str:
        """A live row whose unit systemd has collected (it ended while madre was down or
        could not write): record the end systemd logged for it. ``"ended"`` when
        recorded (or held), ``"later"`` when PID 1's end lines may still be on their way,
        ``""`` when the journal knows no end (the caller calls it lost)."""
        if r["status"] not in STARTED:
            return ""
        try:
            end = self.sd.last_result(r["unit"], since=float(r["started_at"] or 0))
        except SystemdError as e:
            log.warning("reading the end of %s from the journal: %s", r["unit"], e)
            return ""
        if end is None:
            return ""
        if end.get("EndNotLogged"):
            # journald may not have written PID 1's last lines yet: ask again at the next
            # reconcile, and call it lost only if the end never shows up
            first = self._end_awaited.setdefault(r["id"], time.monotonic())
            return "later" if time.monotonic() - first < END_LOG_WAIT else ""
        self._end_awaited.pop(r["id"], None)
        if end.get("NeverStarted"):
            if r["status"] != HijaStatus.STARTING:
                return ""
            # madre recorded `starting`, then stopped before StartTransientUnit: the
            # hija never ran (nothing to lose, nothing to stop)
            self.tracked.pop(r["unit"], None)
            self._transition(r["id"], HijaStatus.FAILED, only_from=(HijaStatus.STARTING,),
                             level=logging.WARNING, reason="its unit never started "
                             "(madre was interrupted before starting it)")
            return "ended"
        tr = Tracked(r["id"], float(r["ttl_s"]), time.monotonic(), seen_active=True,
                     running=r["status"] == HijaStatus.RUNNING,
                     stop_as=HijaStatus.STOPPED if r["stop_requested_at"] is not None else None)
        tr.props.update(end)
        tr.props.setdefault("ActiveState", "inactive")
        self._record_end(r["unit"], tr, note="from the journal")
        return "ended"

    def end_awaited(self) -> bool:
        """True while reconcile waits for the logged end of a collected unit."""
        return bool(self._end_awaited)

    # --- status --------------------------------------------------------------------------
    def summary(self) -> tuple[int, float | None]:
        """(running hijas, seconds to the next expiry or None)."""
        r = self.db.query("SELECT count(*), min(expires_at) FROM spawner_hijas WHERE "
                          "status = ?", (HijaStatus.RUNNING,))[0]
        self.earliest_expiry = r[1]  # wall clock, for madre's next timed pass
        nxt = None if r[1] is None else max(0.0, r[1] - self.clock())
        return int(r[0]), nxt


def _apply(c: sqlite3.Connection, h: Held, *, restore: bool) -> str | bool:
    """One transition inside the caller's write: the row update and its event; the
    row's template if it moved, False if it was not in ``only_from``.

    ``restore``: a row the DB does not have at all (lost with a deleted or replaced
    file) is re-created from madre's copy, in the state after the transition."""
    sets = ", ".join(f"{k} = ?" for k in ("status", *h.cols))
    marks = ",".join("?" * len(h.only_from))
    row = c.execute(f"UPDATE spawner_hijas SET {sets} WHERE id = ? AND status IN "  # noqa: S608
                    f"({marks}) RETURNING template",
                    (h.status, *h.cols.values(), h.hija_id, *h.only_from)).fetchone()
    if row is not None:
        template = str(row[0])
    elif restore and _insert_missing(c, h.row):
        template = str(h.row.get("template") or "unknown")
    else:
        return False
    record_event(c, "madre", EVENT_OF[h.status], subject=h.hija_id, status=h.status,
                 **h.cols)
    return template


def _insert_missing(c: sqlite3.Connection, row: dict[str, Any]) -> bool:
    """Re-create ``row`` if the DB has no row with its id (columns the table lacks are
    left out); True when it was inserted."""
    if not row.get("id") or not row.get("unit") or c.execute(
            "SELECT 1 FROM spawner_hijas WHERE id = ?", (row["id"],)).fetchone():
        return False
    have = {r[1] for r in c.execute("PRAGMA table_info(spawner_hijas)")}
    keep = {k: v for k, v in row.items() if k in have}
    keep.setdefault("template", "unknown")
    keep.setdefault("ttl_s", 1)
    keep.setdefault("created_at", time.time())
    names = ", ".join(keep)
    c.execute(f"INSERT INTO spawner_hijas ({names}) VALUES "  # noqa: S608
              f"({','.join('?' * len(keep))})", tuple(keep.values()))
    record_event(c, "madre", "hija_restored", subject=row["id"], status=row.get("status"))
    log.warning("hija %s: row missing from the DB, re-created from madre's copy (%s)",
                row["id"], row.get("status"), extra={"VX11_EVENT": "hija_restored",
                                                     "VX11_HIJA_ID": row["id"]})
    return True
