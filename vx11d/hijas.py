"""Hija requests: template arguments, argv building, and the request/stop/activation rows.

Shared core (code two daemons need lives in the core, docs/architecture.md): the gateway
and ``vx11ctl`` validate a spawn request and write its ``requested`` row; madre builds
the argv from the same template and carries the request out. Nothing here talks to
systemd.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import socket
import sqlite3
import time
from enum import StrEnum
from typing import Any

from .config import Config, HijaTemplate
from .db import Database, record_event
from .errors import InputError


class HijaStatus(StrEnum):
    """A hija row's ``status``: the values the ``spawner_hijas`` CHECK constraint allows
    (each compares equal to its string, which is what the DB holds)."""

    REQUESTED = "requested"  # written by the gateway or vx11ctl; madre has not acted yet
    STARTING = "starting"  # madre started the unit; not yet seen running
    RUNNING = "running"
    EXPIRED = "expired"  # stopped by madre at its TTL
    EXITED = "exited"  # ended by itself, exit status 0
    FAILED = "failed"  # ended with an error, or systemd refused it
    STOPPED = "stopped"  # a stop was asked for (API, vx11ctl) and carried out
    LOST = "lost"  # its unit vanished while madre was not watching
    OOM = "oom"  # killed by the kernel for its memory limit


LIVE = (HijaStatus.REQUESTED, HijaStatus.STARTING, HijaStatus.RUNNING)
ENDED = (HijaStatus.EXPIRED, HijaStatus.EXITED, HijaStatus.FAILED, HijaStatus.STOPPED,
         HijaStatus.LOST, HijaStatus.OOM)
# What a spawn waiter waits for: the row has left requested/starting.
SETTLED = (HijaStatus.RUNNING, *ENDED)
# madre started its unit and it has not ended.
STARTED = (HijaStatus.STARTING, HijaStatus.RUNNING)


def sql_list(statuses: tuple[HijaStatus, ...]) -> str:
    """``('a','b')``: statuses as an SQL list literal, for a query text (the partial
    index ``spawner_hijas_live_port`` is only used when the query names its list)."""
    return "(" + ",".join(f"'{s.value}'" for s in statuses) + ")"


LIVE_SQL = sql_list(LIVE)
ENDED_SQL = sql_list(ENDED)
COMPONENTS = ("hermes", "switch")
ID_RE = re.compile(r"^[a-z0-9]{10}$")
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


class NotFound(InputError):
    """The named thing (template, hija) does not exist."""


class Conflict(InputError):
    """The request conflicts with the current state (e.g. stopping an ended hija)."""


def new_id() -> str:
    """A short random hija id, safe inside a unit name (10 chars of [a-z0-9])."""
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(10))


def unit_name(hija_id: str) -> str:
    return f"vx11-hija-{hija_id}.service"


def check_args(tpl: HijaTemplate, args: Any) -> dict[str, str]:
    """The template's arguments, validated and defaulted; InputError names the problem."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise InputError("args must be a JSON object")
    unknown = sorted(set(args) - set(tpl.args))
    if unknown:
        raise InputError(f"unknown argument(s): {', '.join(map(str, unknown))[:200]}")
    out: dict[str, str] = {}
    for name, spec in tpl.args.items():
        if name not in args:
            if spec.required:
                raise InputError(f"argument {name!r} is required")
            out[name] = spec.default
            continue
        value = args[name]
        if spec.type == "int":
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise InputError(f"argument {name!r} must be an integer")
            try:
                n = int(value)
            except ValueError as e:
                raise InputError(f"argument {name!r} must be an integer") from e
            if not spec.min <= n <= spec.max:
                raise InputError(f"argument {name!r} must be in [{spec.min}, {spec.max}]")
            out[name] = str(n)
        else:
            if not isinstance(value, str):
                raise InputError(f"argument {name!r} must be a string")
            if not re.fullmatch(spec.pattern, value):
                raise InputError(f"argument {name!r} does not match {spec.pattern}")
            out[name] = value
    return out


def build_argv(tpl: HijaTemplate, args: dict[str, str], port: int | None) -> list[str]:
    """The hija's argv: each ``{name}`` in an item replaced by its value; never a shell."""
    values = dict(args)
    if port is not None:
        values["port"] = str(port)

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in values:
            raise InputError(f"template placeholder {{{key}}} has no value")
        return values[key]

    return [_PLACEHOLDER.sub(sub, item) for item in tpl.command]


def check_ttl(tpl: HijaTemplate, ttl: Any, min_ttl: float) -> float:
    """The requested TTL in seconds: the template's ``default_ttl`` when none is given,
    at least ``min_ttl`` (madre.min_ttl), at most the template's max."""
    if ttl is None:
        ttl = float(tpl.default_ttl)
        if ttl < min_ttl:
            raise InputError(f"this template's default_ttl {ttl:g}s is below madre.min_ttl "
                             f"{min_ttl:g}s: give ttl_s")
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise InputError("ttl_s must be a number of seconds")
    if not ttl == ttl or ttl <= 0:
        raise InputError("ttl_s must be > 0")
    if ttl < min_ttl:
        raise InputError(f"ttl_s {ttl:g} is below madre.min_ttl {min_ttl:g}s")
    if ttl > tpl.max_ttl:
        raise InputError(f"ttl_s {ttl:g} is above this template's max_ttl {tpl.max_ttl:g}")
    return float(ttl)


def request_spawn(db: Database, cfg: Config, template: Any, ttl: Any, args: Any,
                  requested_by: str, client: str = "") -> dict[str, Any]:
    """Validate a spawn request and write its ``requested`` row; returns the row.

    ``requested_by`` is who asked (a credential name, or ``vx11ctl``), kept in the row
    and the audit trail; ``client`` (an address) only in the audit trail."""
    if not isinstance(template, str) or template not in cfg.madre.templates:
        raise NotFound(f"unknown template {str(template)[:64]!r}")
    tpl = cfg.madre.templates[template]
    ttl_s = check_ttl(tpl, ttl, cfg.madre.min_ttl)
    clean = check_args(tpl, args)
    hid = new_id()
    now = time.time()

    def fn(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO spawner_hijas (id, template, args, ttl_s, unit, status, "
                  "created_at, requested_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                  (hid, template, json.dumps(clean, sort_keys=True), ttl_s, unit_name(hid),
                   HijaStatus.REQUESTED.value, now, requested_by))
        record_event(c, "madre", "hija_requested", subject=hid, template=template,
                     ttl_s=ttl_s, by=requested_by, **_client(client))

    db.write(fn)
    return get(db, hid)


def _client(client: str) -> dict[str, str]:
    return {"client": client} if client else {}


def request_stop(db: Database, hija_id: str, requested_by: str, client: str = ""
                 ) -> dict[str, Any]:
    """Mark a live hija for stopping (madre carries it out); NotFound or Conflict."""
    if not isinstance(hija_id, str) or not ID_RE.match(hija_id):
        raise NotFound(f"no hija {hija_id[:32]!r}")

    def fn(c: sqlite3.Connection) -> None:
        row = c.execute("SELECT status, stop_requested_at FROM spawner_hijas WHERE id = ?",
                        (hija_id,)).fetchone()
        if row is None:
            raise NotFound(f"no hija {hija_id!r}")
        if row["status"] not in LIVE:
            raise Conflict(f"hija {hija_id} already ended ({row['status']})")
        if row["stop_requested_at"] is None:
            c.execute("UPDATE spawner_hijas SET stop_requested_at = ?, stop_requested_by = ? "
                      "WHERE id = ?", (time.time(), requested_by, hija_id))
            record_event(c, "madre", "hija_stop_requested", subject=hija_id, by=requested_by,
                         **_client(client))

    db.write(fn)
    return get(db, hija_id)


def get(db: Database, hija_id: str) -> dict[str, Any]:
    """One hija row as a dict; NotFound when there is none."""
    rows = db.query("SELECT * FROM spawner_hijas WHERE id = ?", (hija_id,))
    if not rows:
        raise NotFound(f"no hija {hija_id[:32]!r}")
    return row_dict(rows[0])


def listing(db: Database, status: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Hijas, newest first; only ``status`` ('live' means requested/starting/running)."""
    if status == "live":
        rows = db.query("SELECT * FROM spawner_hijas WHERE status IN (?, ?, ?) "
                        "ORDER BY created_at DESC LIMIT ?", (*LIVE, limit))
    elif status:
        rows = db.query("SELECT * FROM spawner_hijas WHERE status = ? "
                        "ORDER BY created_at DESC LIMIT ?", (status, limit))
    else:
        rows = db.query("SELECT * FROM spawner_hijas ORDER BY created_at DESC LIMIT ?",
                        (limit,))
    return [row_dict(r) for r in rows]


def row_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    with contextlib.suppress(ValueError):
        d["args"] = json.loads(d.get("args") or "{}")
    return d


def wake_madre(path: str) -> bool:
    """Send madre a wake-up datagram; False (not an error) when madre is not listening."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.setblocking(False)
            s.sendto(b"w", path)
        return True
    except OSError:
        return False


# The settle notice: a waiter (the gateway) sends madre ``b"s <id>"`` from its own
# autobound (abstract) datagram socket instead of the plain ``b"w"``; madre wakes as for
# ``w`` and, once that hija's row has left ``requested``/``starting`` (committed), sends
# the id back to the sender's address. It is only a hint: the DB row stays the record
# (the waiter re-reads it), and a lost notice costs the waiter its fallback re-read.
SETTLE = b"s "


def settle_request(hija_id: str) -> bytes:
    return SETTLE + hija_id.encode()


def parse_settle(data: bytes) -> str | None:
    """The hija id a wake datagram asks to be told about, or None (a plain wake)."""
    if not data.startswith(SETTLE):
        return None
    hid = data[len(SETTLE):].decode("ascii", errors="replace")
    return hid if ID_RE.match(hid) else None


# --- activation windows ---------------------------------------------------------------

def activate(db: Database, cfg: Config, component: Any, seconds: Any,
             requested_by: str, client: str = "") -> dict[str, Any]:
    """Open (or extend) an activation window for ``component``; TTL required."""
    if component not in COMPONENTS:
        raise NotFound(f"unknown component {str(component)[:32]!r}; one of "
                       f"{', '.join(COMPONENTS)}")
    if seconds is None:
        raise InputError("a duration is required: nothing is activated without a TTL")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) \
            or not seconds == seconds or seconds <= 0:
        raise InputError("the duration must be a positive number of seconds")
    if seconds < cfg.madre.min_ttl:
        raise InputError(f"duration {seconds:g}s is below madre.min_ttl "
                         f"{cfg.madre.min_ttl:g}s")
    if seconds > cfg.madre.max_activation:
        raise InputError(f"duration {seconds:g}s is above madre.max_activation "
                         f"{cfg.madre.max_activation:g}s")
    now = time.time()

    def fn(c: sqlite3.Connection) -> int:
        cur = c.execute("INSERT INTO activations (component, created_at, expires_at, "
                        "requested_by) VALUES (?, ?, ?, ?)",
                        (component, now, now + float(seconds), requested_by))
        record_event(c, "madre", "activation_opened", subject=component,
                     seconds=float(seconds), by=requested_by, **_client(client))
        return int(cur.lastrowid or 0)

    aid = db.write(fn)
    return dict(db.query("SELECT * FROM activations WHERE id = ?", (aid,))[0])


def deactivate(db: Database, component: Any, requested_by: str, client: str = "") -> int:
    """End every live window of ``component`` now; how many were ended."""
    if component not in COMPONENTS:
        raise NotFound(f"unknown component {str(component)[:32]!r}")
    now = time.time()

    def fn(c: sqlite3.Connection) -> int:
        n = c.execute("UPDATE activations SET ended_at = ?, ended_reason = 'deactivated', "
                      "ended_by = ? WHERE component = ? AND ended_at IS NULL",
                      (now, requested_by, component)).rowcount
        if n:
            record_event(c, "madre", "activation_ended", subject=component,
                         reason="deactivated", by=requested_by, **_client(client))
        return n

    return db.write(fn)


def live_windows(db: Database) -> list[dict[str, Any]]:
    """Activation windows not ended and not past their expiry."""
    return [dict(r) for r in db.query(
        "SELECT * FROM activations WHERE ended_at IS NULL AND expires_at > ? "
        "ORDER BY expires_at", (time.time(),))]
