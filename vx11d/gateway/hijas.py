"""Route module: hijas. ``POST /vx11/spawn``, ``GET /vx11/hijas[/{id}]``, ``DELETE``.

The gateway never starts a unit: it validates the request against the template,
writes the ``requested`` row, and wakes madre with one datagram sent from its own
reply socket (``s <id>``, see :func:`vx11d.hijas.settle_request`). madre sends the id
back once the row is committed ``running`` (or ended); the gateway then re-reads the
row, which stays the record. No polling: a notice that never comes (madre restarted,
a datagram dropped) only costs a re-read every ``FALLBACK`` seconds, bounded by
``gateway.spawn_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from typing import Any

from aiohttp import web

from .. import hijas, textfmt
from ..errors import InputError
from .context import CREDENTIAL, CTX
from .http import ApiError, read_json

FALLBACK = 0.25  # re-read the row this often when no settle notice came
log = logging.getLogger("vx11.gateway")


class SettleWaiter:
    """One autobound datagram socket per gateway process: wakes madre, hears back."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind("")  # Linux autobind: a unique abstract address, no file
        self.sock.setblocking(False)
        self.loop = asyncio.get_running_loop()
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self.loop.add_reader(self.sock.fileno(), self._on_notice)

    def _on_notice(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                hid = self.sock.recv(64).decode("ascii", errors="replace")
                fut = self.waiting.get(hid)
                if fut is not None and not fut.done():
                    fut.set_result(None)

    def wake(self, path: str, hija_id: str) -> asyncio.Future[None]:
        """Register interest in ``hija_id`` (before madre can answer), then wake madre."""
        fut = self.waiting[hija_id] = self.loop.create_future()
        try:
            self.sock.sendto(hijas.settle_request(hija_id), path)
        except OSError as e:  # madre not listening: its tick or next start picks it up
            log.debug("waking madre at %s: %s", path, e)
        return fut

    def forget(self, hija_id: str) -> None:
        fut = self.waiting.pop(hija_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


def _waiter(app: web.Application) -> SettleWaiter:
    extras = app[CTX].extras
    w = extras.get("hijas_waiter")
    if w is None:
        w = extras["hijas_waiter"] = SettleWaiter()
    return w


async def wait_settled(app: web.Application, row: dict[str, Any]) -> dict[str, Any]:
    """Wake madre and wait until the row is running or ended (or ``spawn_wait`` ran out)."""
    ctx = app[CTX]
    w = _waiter(app)
    hid = row["id"]
    fut = w.wake(ctx.cfg.gateway.madre_wake_socket, hid)
    deadline = time.monotonic() + ctx.cfg.gateway.spawn_wait
    try:
        while row["status"] not in hijas.SETTLED:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if fut.done():  # told, yet not settled (never expected): plain fallback
                await asyncio.sleep(min(left, FALLBACK))
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(fut), min(left, FALLBACK))
            row = await ctx.db_call(hijas.get, ctx.db, hid)
    finally:
        w.forget(hid)
    return row


def _public(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "template", "args", "ttl_s", "port", "unit", "main_pid", "status",
            "created_at", "started_at", "expires_at", "ended_at", "exit_status", "result",
            "reason", "stop_requested_at", "memory_max", "memory_peak", "requested_by",
            "stop_requested_by")
    return textfmt.with_times({k: row.get(k) for k in keys})


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
        row = await ctx.db_call(hijas.request_spawn, ctx.db, ctx.cfg, body.get("template"),
                                body.get("ttl_s"), body.get("args"),
                                requested_by=request[CREDENTIAL],
                                client=f"http:{request.remote}")
    except InputError as e:
        raise _api_error(e) from e
    row = await wait_settled(request.app, row)
    status = 201 if row["status"] in hijas.SETTLED else 202
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
    rows = await ctx.db_call(hijas.listing, ctx.db, status, limit)
    return web.json_response({"hijas": [_public(r) for r in rows], "count": len(rows)})


async def get_hija(request: web.Request) -> web.Response:
    """One hija."""
    hid = request.match_info["id"]
    if not hijas.ID_RE.match(hid):
        raise ApiError(404, "not_found", "no such hija")
    ctx = request.app[CTX]
    try:
        return web.json_response(_public(await ctx.db_call(hijas.get, ctx.db, hid)))
    except InputError as e:
        raise _api_error(e) from e


async def stop_hija(request: web.Request) -> web.Response:
    """Ask madre to stop a live hija: 202; 404 unknown; 409 already ended."""
    ctx = request.app[CTX]
    try:
        row = await ctx.db_call(hijas.request_stop, ctx.db, request.match_info["id"],
                                requested_by=request[CREDENTIAL],
                                client=f"http:{request.remote}")
    except InputError as e:
        raise _api_error(e) from e
    hijas.wake_madre(ctx.cfg.gateway.madre_wake_socket)
    return web.json_response(_public(row), status=202)


async def _close_waiter(app: web.Application) -> None:
    w = app[CTX].extras.pop("hijas_waiter", None)
    if w is not None:
        w.close()


def setup(app: web.Application) -> None:
    app.on_cleanup.append(_close_waiter)
    app.router.add_post("/vx11/spawn", spawn)
    app.router.add_get("/vx11/hijas", list_hijas)
    app.router.add_get("/vx11/hijas/{id}", get_hija)
    app.router.add_delete("/vx11/hijas/{id}", stop_hija)
