"""``GET /health``: the set's state for anyone, the detail for the token holder.

A cached view is refreshed on demand, not on a clock: the DB probe (in the DB
threads: is the file still ours, and while degraded, do writes work again), then every
route module's contribution (daemon states over D-Bus, Hermes), each bounded. The set
is ``degraded`` when the DB is (its cause) or when madre's unit is ``failed``
(``madre_failed``: nothing can be spawned); other daemons' states are in the detail.

A request without a token reads that view when it is at most ``MAX_AGE`` old; an older
one is refreshed first (the request waits up to ``REFRESH_WAIT`` for it, then answers
the last view). At most one refresh is in flight: a flood of strangers shares it, and
then reads the fresh view for ``MAX_AGE``, so it costs at most one D-Bus round per
``MAX_AGE`` whatever its size, and a dict lookup per request. What the gateway already
learns by itself is not waited for: a DB fault any request met is in the answer at
once (the handle's state, no I/O). While the DB is degraded the service's tick
refreshes the view (the probe is what finds writes working again).

* no token: ``{"status": "ok"}`` → 200, or ``{"status": "degraded", "cause": CODE}``
  → 503. The cause is a short code (``read_only``, ``disk_full``, ``db_missing``,
  ``db_replaced``, ``locked``, ...): what a load balancer or a pager needs, and
  nothing about the host (no StatusText, no addresses, no paths).
* a valid token: the same plus ``db`` (cause, message, since) and every
  contribution, computed at once (an operator asking wants it fresh).
* an invalid token: 401 and counted by the failure limiter, like every path, so
  /health is no free oracle for guessing tokens.
* a stranger asking more than ``STRANGER_RATE`` times a second gets its answer
  ``TARPIT_S`` late (:class:`StrangerThrottle`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiohttp import web

from .. import textfmt
from .context import AUTHENTICATED, CTX, SCOPES, GatewayContext

log = logging.getLogger("vx11.gateway")

MAX_AGE = 5.0  # a tokenless answer comes from a view at most this old
REFRESH_WAIT = 2.0  # a request waits this long for a refresh, then takes the last view
REFRESH = REFRESH_WAIT  # the DB probe's bound inside one refresh
CONTRIBUTION_WAIT = 1.5  # each route module's contribution, at most
MADRE = "vx11-madre.service"


TARPIT_S = 1.0  # a stranger over its rate waits this long for its answer
STRANGER_RATE = 20.0  # tokenless /health per second per client address (burst: twice)
MAX_TRACKED = 4096


class StrangerThrottle:
    """Tokenless /health per client address: a token bucket; over it, a delayed answer.

    A delay, not an error: a monitor polling too fast still gets the truth, and a
    flood (a client that waits for each answer, as every HTTP load tool does) is
    slowed to its connection count per ``TARPIT_S`` at the price of a timer each,
    leaving the event loop to the authenticated clients.
    """

    def __init__(self, rate: float = STRANGER_RATE, clock=time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, 2 * rate, clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def over(self, client: str) -> bool:
        """Take one token for ``client``; True when it had none left."""
        now = self.clock()
        tokens, last = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if len(self._buckets) >= MAX_TRACKED and client not in self._buckets:
            self._buckets.clear()  # bounded memory; a reset only forgives
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return True
        self._buckets[client] = (tokens - 1.0, now)
        return False


class HealthView:
    """The last refreshed aggregate: status, cause, and when it was computed."""

    def __init__(self, clock=time.monotonic) -> None:
        self.status = "ok"
        self.cause = ""
        self.checked = 0.0
        self.detail: dict[str, Any] = {}
        self.clock = clock
        self.fresh_at = float("-inf")  # clock() when the last refresh finished
        self.inflight: asyncio.Future | None = None
        self.refreshes = 0

    def public(self, db: Any = None) -> dict[str, Any]:
        """The aggregate, or ``db``'s fault when it has one now (its last state, no I/O)."""
        status, cause = self.status, self.cause
        if db is not None:
            db_status, db_cause, _ = db.health()
            if db_status != "ok":
                status, cause = "degraded", db_cause
        body: dict[str, Any] = {"status": status}
        if cause:
            body["cause"] = cause
        return body


VIEW: web.AppKey[HealthView] = web.AppKey("vx11_health", HealthView)
THROTTLE: web.AppKey[StrangerThrottle] = web.AppKey("vx11_health_throttle", StrangerThrottle)


def db_state(ctx: GatewayContext) -> dict[str, Any]:
    """The DB part of the detail, from what the handle last saw (no I/O)."""
    status, cause, message = ctx.db.health()
    out: dict[str, Any] = {"status": status}
    if cause:
        out["cause"], out["message"] = cause, message
        since = ctx.db.fault_since
        if since:
            out["since"] = textfmt.api_time(since)
    return out


async def probe_db(ctx: GatewayContext) -> None:
    """Run the DB probe in the DB threads; a probe still waiting keeps the last state."""
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(ctx.pool, ctx.db.probe)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(fut), REFRESH)


async def contributions(app: web.Application) -> dict[str, Any]:
    """Every route module's /health contribution, each bounded, none able to fail it."""
    body: dict[str, Any] = {}
    for contribute in app[CTX].extras.get("health", []):
        try:
            body.update(await asyncio.wait_for(contribute(app), CONTRIBUTION_WAIT))
        except TimeoutError:
            log.debug("health contribution %s timed out", contribute.__qualname__)
        except Exception:  # a contribution's bug must not take /health down
            log.exception("health contribution %s failed", contribute.__qualname__)
    return body


async def refresh(app: web.Application) -> None:
    """Recompute the cached view once."""
    ctx, view = app[CTX], app[VIEW]
    await probe_db(ctx)
    view.detail = await contributions(app)
    status, cause, _ = ctx.db.health()
    daemons = view.detail.get("daemons")
    madre = daemons.get(MADRE, {}) if isinstance(daemons, dict) else {}
    if status == "ok" and madre.get("active_state") == "failed":
        status, cause = "degraded", "madre_failed"  # no spawn can start
    view.status, view.cause = status, cause
    view.checked = time.time()
    view.fresh_at = view.clock()
    view.refreshes += 1


async def _refresh_logged(app: web.Application) -> None:
    try:
        await refresh(app)
    except asyncio.CancelledError:
        raise
    except Exception:  # a bug in one refresh must not fail the requests waiting for it
        log.exception("health refresh failed")


def kick(app: web.Application) -> asyncio.Future:
    """The refresh in flight, or a new one: never two at once."""
    view = app[VIEW]
    if view.inflight is None or view.inflight.done():
        view.inflight = asyncio.ensure_future(_refresh_logged(app))
    return view.inflight


async def fresh(app: web.Application, max_age: float = MAX_AGE) -> HealthView:
    """The view, refreshed first when older than ``max_age`` (waiting at most
    ``REFRESH_WAIT`` for it: a hung D-Bus answers with the last view)."""
    view = app[VIEW]
    if view.clock() - view.fresh_at > max_age:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(kick(app)), REFRESH_WAIT)
    return view


async def health(request: web.Request) -> web.Response:
    """Aggregate state from the cached view; with a ``read`` credential, the detail too."""
    ctx = request.app[CTX]
    scopes = request.get(SCOPES, frozenset())
    if not request.get(AUTHENTICATED) or not ({"read", "admin"} & scopes):
        if request.app[THROTTLE].over(request.remote or "unknown"):
            await asyncio.sleep(TARPIT_S)
        public = (await fresh(request.app)).public(ctx.db)
        return web.json_response(public, status=200 if public["status"] == "ok" else 503)
    view = await fresh(request.app)
    public = view.public(ctx.db)
    code = 200 if public["status"] == "ok" else 503
    body: dict[str, Any] = {**public, "component": "gateway", "db": db_state(ctx)}
    if view.checked:
        body["checked"] = textfmt.api_time(view.checked)
    body.update(await contributions(request.app))
    return web.json_response(body, status=code)


def setup(app: web.Application) -> None:
    """The /health route; the first view at start (the probe applies migrations)."""
    app[VIEW] = HealthView()
    app[THROTTLE] = StrangerThrottle()
    app.router.add_get("/health", health)

    async def start(app: web.Application) -> None:
        with contextlib.suppress(TimeoutError):  # the first view, if the DB answers soon
            await asyncio.wait_for(asyncio.shield(kick(app)), REFRESH_WAIT)

    async def stop(app: web.Application) -> None:
        t = app[VIEW].inflight
        if t is not None and not t.done():
            t.cancel()
            await asyncio.wait([t], timeout=REFRESH + CONTRIBUTION_WAIT)

    app.on_startup.append(start)
    app.on_cleanup.append(stop)
