"""Route module: hijas. ``POST /vx11/spawn``, ``GET /vx11/hijas[/{id}]``, ``DELETE``.

The gateway never starts a unit: it validates the request against the template,
writes the ``requested`` row, wakes madre with one datagram, and watches the row
(a cheap indexed read every few milliseconds, bounded by ``gateway.spawn_wait``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from .. import hijas
from ..errors import InputError
from .context import CTX
from .http import ApiError, read_json

SETTLED = ("running", *hijas.ENDED)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "template", "args", "ttl_s", "port", "unit", "main_pid", "status",
            "created_at", "started_at", "expires_at", "ended_at", "exit_status", "result",
            "reason", "stop_requested_at")
    return {k: row.get(k) for k in keys}


def _api_error(e: InputError) -> ApiError:
    if isinstance(e, hijas.NotFound):
        return ApiError(404, "not_found", str(e))
    if isinstance(e, hijas.Conflict):
        return ApiError(409, "conflict", str(e))
    return ApiError(422, "invalid", str(e))


async def spawn(request: web.Request) -> web.Response:
    """Spawn a hija from a template with a TTL; 201 once running (202 if still starting)."""
    ctx = request.app[CTX]
    body = await read_json(request)
    unknown = sorted(set(body) - {"template", "ttl_s", "args"})
    if unknown:
        raise ApiError(422, "invalid", f"unknown field(s): {', '.join(unknown)[:200]}")
    if "template" not in body:
        raise ApiError(422, "invalid", "template is required")
    try:
        row = hijas.request_spawn(ctx.db, ctx.cfg, body.get("template"), body.get("ttl_s"),
                                  body.get("args"), requested_by=f"http:{request.remote}")
    except InputError as e:
        raise _api_error(e) from e
    hijas.wake_madre(ctx.cfg.gateway.madre_wake_socket)
    deadline = time.monotonic() + ctx.cfg.gateway.spawn_wait
    delay = 0.001
    while row["status"] not in SETTLED and time.monotonic() < deadline:
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.005)
        row = hijas.get(ctx.db, row["id"])
    status = 201 if row["status"] in SETTLED else 202
    return web.json_response(_public(row), status=status,
                             headers={"Location": f"/vx11/hijas/{row['id']}"})


async def list_hijas(request: web.Request) -> web.Response:
    """Hijas, newest first; ``?status=live|running|expired|...``, ``?limit=N``."""
    ctx = request.app[CTX]
    status = request.query.get("status")
    if status is not None and status not in ("live", *hijas.LIVE, *hijas.ENDED):
        raise ApiError(400, "bad_query", f"unknown status {status[:32]!r}")
    try:
        limit = int(request.query.get("limit", "200"))
    except ValueError as e:
        raise ApiError(400, "bad_query", "limit must be an integer") from e
    if not 1 <= limit <= 10_000:
        raise ApiError(400, "bad_query", "limit must be in [1, 10000]")
    rows = hijas.listing(ctx.db, status, limit)
    return web.json_response({"hijas": [_public(r) for r in rows], "count": len(rows)})


async def get_hija(request: web.Request) -> web.Response:
    """One hija."""
    hid = request.match_info["id"]
    if not hijas.ID_RE.match(hid):
        raise ApiError(404, "not_found", "no such hija")
    try:
        return web.json_response(_public(hijas.get(request.app[CTX].db, hid)))
    except InputError as e:
        raise _api_error(e) from e


async def stop_hija(request: web.Request) -> web.Response:
    """Ask madre to stop a live hija: 202; 404 unknown; 409 already ended."""
    ctx = request.app[CTX]
    try:
        row = hijas.request_stop(ctx.db, request.match_info["id"],
                                 requested_by=f"http:{request.remote}")
    except InputError as e:
        raise _api_error(e) from e
    hijas.wake_madre(ctx.cfg.gateway.madre_wake_socket)
    return web.json_response(_public(row), status=202)


def setup(app: web.Application) -> None:
    app.router.add_post("/vx11/spawn", spawn)
    app.router.add_get("/vx11/hijas", list_hijas)
    app.router.add_get("/vx11/hijas/{id}", get_hija)
    app.router.add_delete("/vx11/hijas/{id}", stop_hija)
