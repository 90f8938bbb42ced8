"""Route module: activation windows (``GET|POST /vx11/policy``) and daemon states in /health.

Windows are rows in ``activations``; madre ends expired ones and starts or stops the
units they cover. Every activation needs a TTL (``ttl_s`` seconds or ``for`` like
``2h``), at most ``madre.max_activation``.

/health reports each vx11 daemon's ``ActiveState`` and ``StatusText`` (its STATUS=
line) read from systemd over D-Bus: systemd is the authority on whether a unit runs,
the property reads are unprivileged and read-only, and the DB has no liveness
information. The reads run in a worker thread with a short deadline, so a slow bus
never stalls the event loop; failures show as ``unknown``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from .. import hijas, textfmt, units
from ..confload import parse_duration
from ..errors import InputError, SystemdError
from .context import CREDENTIAL, CTX
from .http import ApiError, read_json

log = logging.getLogger("vx11.gateway")

DAEMON_UNITS = ("vx11-gateway.service", "vx11-madre.service", "vx11-reaper.service",
                "vx11-hermes.service", "vx11-rotate.timer")


async def get_policy(request: web.Request) -> web.Response:
    """The profile and the live activation windows."""
    ctx = request.app[CTX]
    return web.json_response({"profile": ctx.cfg.madre.profile,
                              "components": list(hijas.COMPONENTS),
                              "windows": [textfmt.with_times(w) for w in await ctx.db_call(
                                  hijas.live_windows, ctx.db)]})


async def post_policy(request: web.Request) -> web.Response:
    """Activate a component for a TTL, or deactivate it."""
    ctx = request.app[CTX]
    body = await read_json(request)
    unknown = sorted(set(body) - {"component", "action", "ttl_s", "for"})
    if unknown:
        raise ApiError(422, "invalid", f"unknown field(s): {', '.join(unknown)[:200]}")
    action = body.get("action", "activate")
    component = body.get("component")
    by, client = request[CREDENTIAL], f"http:{request.remote}"
    try:
        if action == "activate":
            seconds: Any = body.get("ttl_s")
            if seconds is None and body.get("for") is not None:
                try:
                    seconds = float(parse_duration(body["for"]))
                except ValueError as e:
                    raise InputError(f"for: {e}") from e
            row = await ctx.db_call(hijas.activate, ctx.db, ctx.cfg, component, seconds, by,
                                    client)
            hijas.wake_madre(ctx.cfg.gateway.madre_wake_socket)
            return web.json_response({"activated": textfmt.with_times(row)}, status=201)
        if action == "deactivate":
            n = await ctx.db_call(hijas.deactivate, ctx.db, component, by, client)
            hijas.wake_madre(ctx.cfg.gateway.madre_wake_socket)
            return web.json_response({"deactivated": component, "windows_ended": n})
    except hijas.NotFound as e:
        raise ApiError(404, "not_found", str(e)) from e
    except InputError as e:
        raise ApiError(422, "invalid", str(e)) from e
    raise ApiError(422, "invalid", "action must be activate or deactivate")


def timer_status(props: dict[str, Any]) -> str:
    """A timer's line: ``next 2026-12-08T03:00:00Z, last 2026-12-07T03:00:04Z`` (times
    ISO 8601 UTC; ``not scheduled``, ``never``)."""
    nxt = units.usec_time(props.get("NextElapseUSecRealtime"))
    last = units.usec_time(props.get("LastTriggerUSec"))
    return (f"next {textfmt.iso(nxt) if nxt else 'not scheduled'}, "
            f"last {textfmt.iso(last) if last else 'never'}")


def _unit_states() -> dict[str, dict[str, str]]:
    """Each daemon unit's ActiveState and STATUS line, from the core reader."""
    out: dict[str, dict[str, str]] = {}
    bus = units.open_bus()
    try:
        for unit in DAEMON_UNITS:
            try:
                props = units.read(bus, unit)
            except SystemdError as e:
                out[unit] = {"active_state": "unknown", "status": str(e.__cause__ or e)[:100]}
                continue
            if props is None:
                out[unit] = {"active_state": "inactive", "status": "not loaded"}
                continue
            status = str(props.get("StatusText", "")) if unit.endswith(".service") \
                else timer_status(props)
            out[unit] = {"active_state": str(props.get("ActiveState", "unknown")),
                         "status": status}
    finally:
        bus.close()
    return out


async def daemons_health(app: web.Application) -> dict[str, Any]:
    """The /health contribution: each vx11 daemon as systemd sees it."""
    loop = asyncio.get_running_loop()
    try:
        states = await asyncio.wait_for(loop.run_in_executor(None, _unit_states), 1.0)
    except (TimeoutError, OSError, SystemdError) as e:  # no bus: say so, not 500
        log.debug("daemon states unavailable: %s", e)
        return {"daemons": "unknown"}
    return {"daemons": states}


def setup(app: web.Application) -> None:
    app.router.add_get("/vx11/policy", get_policy)
    app.router.add_post("/vx11/policy", post_policy)
    app[CTX].extras.setdefault("health", []).append(daemons_health)
