"""The gateway's aiohttp application: middlewares, /health, and the route modules.

Middlewares, outermost first: metrics (requests by route and code, latency), errors
(every failure becomes a JSON body; a bug is a logged 500, bad input never is; a DB
host fault is 503 + Retry-After naming its cause), auth (401 without a valid credential
on every path but a tokenless ``GET /health``, 429 after repeated failures, 403 when a
valid credential lacks the operation's scope, from ``x-vx11-scope`` in the OpenAPI
document; the journal names the credential of every denial and every operate-scope
request), deadline (per-request timeout → 504).
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from .. import journal, textfmt
from ..errors import DbBusy, DbIntegrityError, DbUnavailable
from . import health, openapi
from .auth import FailureLimiter, Keyring, presented_tokens
from .context import AUTHENTICATED, CREDENTIAL, CTX, SCOPES, GatewayContext
from .http import ApiError, Handler, error_for
from .tls import Tls, is_loopback

log = logging.getLogger("vx11.gateway")

OPEN_PATHS = frozenset({"/health"})
# Label values for the method: any other token a client sends counts as "other", so no
# client can add series (bounded cardinality).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Route modules, each with setup(app). Order only matters for --help listings.
ROUTE_MODULES: list[str] = [
    "vx11d.gateway.openapi",
    "vx11d.gateway.hijas",
    "vx11d.gateway.policy",
    "vx11d.gateway.chain",
]

KEYRING: web.AppKey[Keyring] = web.AppKey("vx11_keyring", Keyring)
TLS: web.AppKey[Tls] = web.AppKey("vx11_tls", Tls)
SCOPE_OF: web.AppKey[dict] = web.AppKey("vx11_scope_of", dict)
LIMITER: web.AppKey[FailureLimiter] = web.AppKey("vx11_limiter", FailureLimiter)
METRICS: web.AppKey[dict] = web.AppKey("vx11_metrics", dict)
# Set on a request that changes state (an operate or admin-only operation): the journal
# gets one api_request line naming its credential, with the final status.
AUDIT: web.RequestKey[bool] = web.RequestKey("vx11_audit", bool)


def _route_label(request: web.Request) -> str:
    info = request.match_info
    if info is None or getattr(info, "http_exception", None) is not None:
        return "unmatched"
    resource = info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def metrics_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    m = request.app[METRICS]
    t0 = time.perf_counter()
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        route = _route_label(request)
        method = request.method if request.method in METHODS else "other"
        m["requests"].labels(route, method, str(status)).inc()
        m["latency"].labels(route).observe(time.perf_counter() - t0)
        if request.get(AUDIT):
            name, client = request[CREDENTIAL], request.remote or "unknown"
            journal.event(log, "api_request", "%s %s by credential %s from %s: %s",
                          request.method, route, name, client, status, credential=name,
                          client=client, status=status)


def retry_after(e: DbUnavailable) -> int:
    """Seconds a client should wait: a lock passes soon, the rest needs a person or space."""
    return 2 if isinstance(e, DbBusy) else 10


@web.middleware
async def errors_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error_for(request, e.status, e.code, e.message, headers=e.headers or None,
                         **e.extra)
    except DbUnavailable as e:  # a host fault: degraded, not broken (docs/faults.md)
        return error_for(request, 503, "unavailable", str(e), cause=e.cause,
                         reason=e.reason, headers={"Retry-After": str(retry_after(e))})
    except web.HTTPRequestEntityTooLarge:
        return error_for(request, 413, "too_large", "request body larger than "
                          f"{request.app._client_max_size} bytes")
    except web.HTTPException as e:
        if e.status < 400:
            raise
        headers = {k: v for k, v in e.headers.items() if k in ("Allow", "Retry-After")}
        return error_for(request, e.status, e.reason.lower().replace(" ", "_"), e.reason,
                          headers=headers or None)
    except DbIntegrityError as e:  # input that slipped past validation: not a 500
        journal.event(log, "gateway_constraint_refused", "the database refused %s %s: %s",
                      request.method, _route_label(request), e, level=logging.WARNING)
        return error_for(request, 422, "invalid", "the database refused these values (a "
                         "constraint); check them against docs/openapi.json")
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, _route_label(request),
                      extra={"VX11_EVENT": "gateway_internal_error"})
        return error_for(request, 500, "internal", "internal error (logged)")


def required_scope(request: web.Request) -> str | None:
    """The scope the matched operation needs (its ``x-vx11-scope``; ``admin`` for a route
    the document does not name); None for /health and unmatched paths (404, 405)."""
    info = request.match_info
    if info is None or getattr(info, "http_exception", None) is not None:
        return None
    resource = info.route.resource
    if resource is None:
        return None
    if resource.canonical in OPEN_PATHS:
        return None
    method = "GET" if request.method == "HEAD" else request.method
    # A route the document does not name is for admin only: fail closed.
    return request.app[SCOPE_OF].get((method, resource.canonical), "admin")


@web.middleware
async def clear_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Without TLS, only loopback peers are served (unless the operator opted in)."""
    if request.secure or is_loopback(request.remote) or request.app[CTX].cfg.gateway \
            .plain_http_beyond_loopback:
        return await handler(request)
    request.app[METRICS]["plain_refused"].inc()
    journal.event(log, "plain_http_refused", "refused %s over plain HTTP from %s: only "
                  "loopback is served without TLS", request.method, request.remote,
                  level=logging.WARNING, client=request.remote)
    return error_for(request, 403, "tls_required", "this gateway serves peers beyond "
                     "loopback over TLS only, and TLS is not configured: configure it "
                     "(docs/security.md), or use it from this host")


# ``vx11ctl smoke`` sends its no-credential requests (which must answer 401) with this
# header holding a credential of its own: from loopback, with a valid one, the 401 is
# logged at debug and not counted as an auth failure, so the operator's check does not
# read as an attack. Anyone else gains nothing: without a valid credential the header
# counts as a failed guess; with one, the client could have authenticated anyway.
PROBE_HEADER = "X-VX11-Probe"


def _prober(keyring: Keyring, values: list[str], client: str) -> str | None:
    """The credential a loopback probe proves, or None."""
    if len(values) != 1 or not is_loopback(client):
        return None
    cred = keyring.current.match(values[0])
    return cred.name if cred is not None else None


def _unauthorized(request: web.Request) -> web.StreamResponse:
    return error_for(request, 401, "unauthorized", "a valid X-VX11-Token or Authorization: "
                     "Bearer credential is required",
                     headers={"WWW-Authenticate": 'Bearer realm="vx11"'})


@web.middleware
async def auth_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    tokens = presented_tokens(request.headers.getall("X-VX11-Token", []),
                              request.headers.getall("Authorization", []))
    if not tokens and request.path in OPEN_PATHS and request.method in ("GET", "HEAD"):
        return await handler(request)  # the aggregate only (see health.py)
    limiter, m = request.app[LIMITER], request.app[METRICS]
    client = request.remote or "unknown"
    wait = limiter.blocked(client)
    if wait > 0:
        m["auth_failures"].labels("rate_limited").inc()
        # Late, so a guessing loop costs the gateway a timer, not its event loop.
        await asyncio.sleep(health.TARPIT_S)
        return error_for(request, 429, "too_many_failures", "too many failed token attempts",
                          headers={"Retry-After": str(int(wait) + 1)})
    keyring = request.app[KEYRING]
    await keyring.fresh()
    creds = [keyring.current.match(t) for t in tokens]  # every one: no short cut
    if tokens and None in creds:  # just added? look at the files now, not in a second
        await keyring.fresh(now=True)
        creds = [keyring.current.match(t) for t in tokens]
    names = ",".join(sorted({c.name for c in creds if c is not None})) or "none"
    if not tokens or None in creds:
        probe = request.headers.getall(PROBE_HEADER, [])
        if not tokens and probe:
            prober = _prober(keyring, probe, client)
            if prober is not None:  # the operator's own check (vx11ctl smoke)
                log.debug("probe by credential %s from %s: %s %s without a credential "
                          "answered 401", prober, client, request.method,
                          _route_label(request), extra={"VX11_EVENT": "auth_probe"})
                return _unauthorized(request)
            tokens = probe  # a probe header that proves nothing is a guess like a token
        if tokens and (blocked := limiter.failed(client)):  # a missing one is no guess
            journal.event(log, "auth_client_blocked", "client %s refused (429) for %s after "
                          "%d failed token attempts", client, textfmt.duration(blocked),
                          limiter.limit, level=logging.WARNING, client=client,
                          seconds=round(blocked))
        reason = "invalid" if tokens else "missing"
        m["auth_failures"].labels(reason).inc()
        journal.event(log, "auth_failed", "rejected %s credential from %s on %s %s",
                      reason, client, request.method, _route_label(request),
                      level=logging.WARNING, client=client, reason=reason, credential=names)
        return _unauthorized(request)
    scopes = frozenset().union(*(c.scopes for c in creds if c is not None))
    scope = required_scope(request)
    if scope is not None and "admin" not in scopes and scope not in scopes:
        m["auth_failures"].labels("forbidden").inc()
        journal.event(log, "auth_forbidden", "credential %s from %s lacks scope %s for %s %s",
                      names, client, scope, request.method, _route_label(request),
                      level=logging.WARNING, client=client, reason="forbidden",
                      credential=names, scope=scope)
        return error_for(request, 403, "forbidden", f"credential {names} lacks scope "
                         f"{scope} (needed for {request.method} {_route_label(request)}); "
                         "see vx11ctl token list", scope=scope)
    request[AUTHENTICATED] = True
    request[CREDENTIAL] = names
    request[SCOPES] = scopes
    if scope in ("operate", "admin"):
        request[AUDIT] = True  # journaled with its final status by metrics_mw
    return await handler(request)


@web.middleware
async def deadline_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
    info = request.match_info
    if info is not None and getattr(info.handler, "_vx11_no_timeout", False):
        return await handler(request)
    try:
        async with asyncio.timeout(request.app[CTX].cfg.gateway.request_timeout):
            return await handler(request)
    except TimeoutError:
        return error_for(request, 504, "timeout", "request took longer than "
                          f"{request.app[CTX].cfg.gateway.request_timeout:g}s")


def build_app(ctx: GatewayContext, keyring: Keyring | str, modules: list[str] | None = None,
              tls_state: Tls | None = None) -> web.Application:
    """The gateway application for ``ctx``, with every route module set up; ``keyring``
    is the live credential set (or one admin secret, for tests and tools)."""
    app = web.Application(client_max_size=int(ctx.cfg.gateway.max_body),
                          middlewares=[metrics_mw, errors_mw, clear_mw, auth_mw,
                                       deadline_mw])
    app[CTX] = ctx
    app[KEYRING] = Keyring.fixed(keyring) if isinstance(keyring, str) else keyring
    app[SCOPE_OF] = openapi.scopes(openapi.document())
    if tls_state is not None:
        app[TLS] = tls_state
    app[LIMITER] = FailureLimiter(ctx.cfg.gateway.auth_fail_limit,
                                  ctx.cfg.gateway.auth_fail_window)
    app[METRICS] = _metrics(ctx)
    health.setup(app)
    app.on_cleanup.append(_close_db)
    app[METRICS]["blocked"].set_function(app[LIMITER].blocked_clients)
    app[METRICS]["tls_enabled"].set(1 if tls_state is not None else 0)
    app[METRICS]["tls_expiry"].set(tls_state.expires if tls_state is not None else 0)
    app[METRICS]["plain_beyond"].set(1 if tls_state is None and
                                     ctx.cfg.gateway.plain_http_beyond_loopback else 0)
    for name in ROUTE_MODULES if modules is None else modules:
        importlib.import_module(name).setup(app)
    return app


async def _close_db(app: web.Application) -> None:
    """After the last request: no more DB threads, and the connections closed."""
    ctx = app[CTX]
    ctx.pool.shutdown(wait=False, cancel_futures=True)
    await asyncio.get_running_loop().run_in_executor(None, ctx.db.close)


def _metrics(ctx: GatewayContext) -> dict:
    existing = ctx.extras.get("gateway_metrics")
    if existing is not None:  # one set per registry, across app rebuilds (tests, reload)
        return existing
    m = {
        "requests": Counter("vx11_gateway_requests_total", "HTTP requests by route, "
                            "method and status code", ["route", "method", "code"],
                            registry=ctx.registry),
        "latency": Histogram("vx11_gateway_request_duration_seconds", "HTTP request "
                             "latency by route", ["route"], registry=ctx.registry,
                             buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1,
                                      2.5, 5, 10, 30)),
        "auth_failures": Counter("vx11_gateway_auth_failures_total", "rejected requests "
                                 "by reason (missing, invalid, rate_limited, forbidden)",
                                 ["reason"], registry=ctx.registry),
        "blocked": Gauge("vx11_gateway_auth_blocked_clients", "clients refused with 429 "
                         "right now (the brute-force limiter has tripped for them)",
                         registry=ctx.registry),
    }
    m["tls_enabled"] = Gauge("vx11_gateway_tls_enabled", "1 when :8000 speaks TLS",
                             registry=ctx.registry)
    m["tls_expiry"] = Gauge("vx11_gateway_tls_cert_expiry_timestamp_seconds", "when the "
                            "TLS certificate expires (0: no TLS)", registry=ctx.registry)
    m["plain_beyond"] = Gauge("vx11_gateway_plain_http_beyond_loopback", "1 when peers "
                              "beyond loopback are served over plain HTTP (opted in: "
                              "credentials in clear)", registry=ctx.registry)
    m["plain_refused"] = Counter("vx11_gateway_plain_http_refused_total", "requests from "
                                 "beyond loopback refused because TLS is not configured",
                                 registry=ctx.registry)
    for reason in ("missing", "invalid", "rate_limited", "forbidden"):
        m["auth_failures"].labels(reason)
    ctx.extras["gateway_metrics"] = m
    return m
