"""The route chain: ``POST /vx11/route`` (Switch → Hermes → remote API → 503 "no route")
and the OpenAI-compatible ``/v1/chat/completions`` + ``/v1/models`` proxied to Hermes
over its UNIX socket, or to the remote API when Hermes is not active.

"Hermes active" means: a live ``hermes`` activation (``ended_at IS NULL`` and not yet
expired) or ``madre.profile: full`` — AND the worker's socket answers. Ending the
activation (``vx11ctl deactivate hermes`` / the policy endpoint) disables it here at
once, even before madre has stopped the unit. Every step that does not answer falls
through to the next and is counted in ``vx11_gateway_route_fallthrough_total``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import Counter, Histogram

from .. import journal
from ..switch import Switch, SwitchRefused
from .context import CTX, GatewayContext
from .http import ApiError, no_timeout, read_json

ROUTES = ("switch", "hermes", "remote", "none")
FALL_REASONS = ("no_answer", "inactive", "unavailable", "error", "timeout", "unconfigured")
STATE: web.AppKey[dict] = web.AppKey("vx11_chain", dict)


class StepFailed(Exception):
    """One step of the chain could not answer; ``reason`` is one of FALL_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason


def _metrics(ctx: GatewayContext) -> dict:
    m = ctx.extras.get("chain_metrics")
    if m is None:
        m = {
            "routed": Counter("vx11_gateway_route_answers", "answers by the route that "
                              "served them (none: 503 no route)", ["route"],
                              registry=ctx.registry),
            "fall": Counter("vx11_gateway_route_fallthrough", "chain steps that did not "
                            "answer, by step and reason", ["step", "reason"],
                            registry=ctx.registry),
            "latency": Histogram("vx11_gateway_route_duration_seconds", "route chain "
                                 "latency by serving route", ["route"], registry=ctx.registry,
                                 buckets=(.0005, .001, .005, .01, .05, .1, .2, .5, 1, 2, 5,
                                          10, 30, 120)),
            "refused": Counter("vx11_gateway_switch_refused", "queries Switch refused "
                               "(arithmetic over a limit)", registry=ctx.registry),
        }
        for r in ROUTES:
            m["routed"].labels(r)
        for step in ("switch", "hermes", "remote"):
            for reason in FALL_REASONS:
                m["fall"].labels(step, reason)
        ctx.extras["chain_metrics"] = m
    return m


RETRY_AFTER_S = 5  # Hermes's RestartSec=2s plus its start


def hermes_enabled(ctx: GatewayContext) -> bool:
    """A live hermes activation in the DB, or the ``full`` profile.

    Called on the loop: one indexed read on a WAL database (tens of microseconds; readers
    never wait for writers), cheaper than a thread hop on every request.
    """
    if ctx.cfg.madre.profile == "full":
        return True
    rows = ctx.db.query("SELECT 1 FROM activations WHERE component = 'hermes' AND ended_at "
                        "IS NULL AND expires_at > ? LIMIT 1", (time.time(),))
    return bool(rows)


class Upstreams:
    """HTTP sessions to Hermes (UNIX socket) and to the remote API, made on first use."""

    def __init__(self) -> None:
        self._hermes: aiohttp.ClientSession | None = None
        self._hermes_path = ""
        self._remote: aiohttp.ClientSession | None = None
        self._key: tuple[str, float, str] = ("", 0.0, "")
        self._old: list[aiohttp.ClientSession] = []

    def hermes(self, path: str) -> aiohttp.ClientSession:
        if self._hermes is None or self._hermes_path != path:
            if self._hermes is not None:
                self._old.append(self._hermes)  # path changed by a reload
            self._hermes = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=path), base_url="http://hermes",
                auto_decompress=False)
            self._hermes_path = path
        return self._hermes

    def remote(self) -> aiohttp.ClientSession:
        if self._remote is None:
            self._remote = aiohttp.ClientSession(auto_decompress=False)
        return self._remote

    def remote_key(self, path: str) -> str:
        if not path:
            return ""
        try:
            mtime = os.stat(path).st_mtime
            if self._key[0] != path or self._key[1] != mtime:
                with open(path) as f:
                    self._key = (path, mtime, f.read().strip())
                journal.register_secret(self._key[2])
        except OSError as e:
            raise StepFailed("unconfigured", f"remote api_key_file: {e.strerror}") from e
        return self._key[2]

    async def close(self) -> None:
        for s in (self._hermes, self._remote, *self._old):
            if s is not None:
                await s.close()


def _remote_target(ctx: GatewayContext, up: Upstreams) -> tuple[str, dict[str, str]]:
    r = ctx.cfg.remote
    if not r.base_url:
        raise StepFailed("unconfigured")
    headers = {"Content-Type": "application/json"}
    key = up.remote_key(r.api_key_file)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return r.base_url.rstrip("/") + "/chat/completions", headers


async def _ask(session: aiohttp.ClientSession, url: str, body: dict, headers: dict,
               timeout: float) -> dict:
    """A non-streaming chat completion; StepFailed on any failure."""
    try:
        async with session.post(url, json=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise StepFailed("error", f"HTTP {resp.status}: {data[:200]!r}")
            out = json.loads(data)
            out["choices"][0]["message"]["content"]  # shape check
            return out
    except TimeoutError as e:
        raise StepFailed("timeout") from e
    except (aiohttp.ClientConnectorError, FileNotFoundError, ConnectionError) as e:
        raise StepFailed("unavailable", str(e)) from e
    except (aiohttp.ClientError, ValueError, KeyError, IndexError, TypeError) as e:
        raise StepFailed("error", f"{type(e).__name__}: {e}") from e


async def route(request: web.Request) -> web.Response:
    """Answer ``{query}`` through the chain; the answer names its route and latency."""
    ctx = request.app[CTX]
    st = request.app[STATE]
    m = st["metrics"]
    t0 = time.perf_counter()
    body = await read_json(request)
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise ApiError(422, "bad_query", "query must be a non-empty string")
    if len(query) > ctx.cfg.switch.max_query_chars:
        raise ApiError(413, "query_too_long", f"query longer than "
                       f"{ctx.cfg.switch.max_query_chars} characters")

    def done(route_name: str, **fields: Any) -> web.Response:
        took = time.perf_counter() - t0
        m["routed"].labels(route_name).inc()
        m["latency"].labels(route_name).observe(took)
        return web.json_response({"route": route_name, "latency_ms": round(took * 1000, 3),
                                  **fields})

    switch = _switch(request.app)
    try:
        decision = switch.decide(query)
    except SwitchRefused as e:
        m["refused"].inc()
        raise ApiError(422, "switch_refused", str(e), route="switch",
                       latency_ms=round((time.perf_counter() - t0) * 1000, 3)) from e
    if decision is not None:
        return done("switch", answer=decision.answer, rule=decision.rule)
    m["fall"].labels("switch", "no_answer").inc()
    tried = {"switch": "no_answer"}
    details: dict[str, str] = {}
    msg = {"messages": [{"role": "user", "content": query}]}
    budget = max(0.5, ctx.cfg.gateway.request_timeout - 1)
    try:
        if not hermes_enabled(ctx):
            raise StepFailed("inactive")
        out = await _ask(st["up"].hermes(ctx.cfg.hermes.socket), "/v1/chat/completions",
                         {**msg, "max_tokens": ctx.cfg.hermes.max_tokens}, {}, budget)
        return done("hermes", answer=out["choices"][0]["message"]["content"],
                    model=out.get("model"), usage=out.get("usage"))
    except StepFailed as e:
        m["fall"].labels("hermes", e.reason).inc()
        tried["hermes"] = e.reason
        details["hermes"] = str(e)
    try:
        url, headers = _remote_target(ctx, st["up"])
        remaining = budget - (time.perf_counter() - t0)
        body = {**msg, "model": ctx.cfg.remote.model or "default",
                "max_tokens": ctx.cfg.hermes.max_tokens}
        out = await _ask(st["up"].remote(), url, body, headers,
                         min(ctx.cfg.remote.timeout, max(0.5, remaining)))
        return done("remote", answer=out["choices"][0]["message"]["content"], tried=tried,
                    details=details,
                    model=out.get("model"), usage=out.get("usage"))
    except StepFailed as e:
        m["fall"].labels("remote", e.reason).inc()
        tried["remote"] = e.reason
        details["remote"] = str(e)
    m["routed"].labels("none").inc()
    raise ApiError(503, "no_route", "no route could answer: " + ", ".join(
        f"{k} {v}" for k, v in tried.items()), tried=tried, details=details,
        latency_ms=round((time.perf_counter() - t0) * 1000, 3))


def _switch(app: web.Application) -> Switch:
    st = app[STATE]
    cfg = app[CTX].cfg.switch
    if st.get("switch_cfg") is not cfg:  # rebuilt after a reload
        st["switch"], st["switch_cfg"] = Switch(cfg), cfg
    return st["switch"]


async def _gone(request: web.Request) -> None:
    """Returns when the client's connection closes."""
    while True:
        t = request.transport
        if t is None or t.is_closing():
            return
        await asyncio.sleep(0.1)


@no_timeout
async def chat_completions(request: web.Request) -> web.StreamResponse:
    """OpenAI-compatible chat completions, proxied to Hermes or to the remote API."""
    ctx = request.app[CTX]
    st = request.app[STATE]
    m = st["metrics"]
    t0 = time.perf_counter()
    body = await read_json(request)
    stream = body.get("stream") is True
    targets = []
    if hermes_enabled(ctx):
        targets.append(("hermes", st["up"].hermes(ctx.cfg.hermes.socket),
                        "/v1/chat/completions", {"Content-Type": "application/json"},
                        body, ctx.cfg.hermes.request_timeout + 5))
    else:
        m["fall"].labels("hermes", "inactive").inc()
    if ctx.cfg.remote.base_url:
        try:
            url, headers = _remote_target(ctx, st["up"])
            rbody = {**body, "model": ctx.cfg.remote.model or body.get("model") or "default"}
            targets.append(("remote", st["up"].remote(), url, headers, rbody,
                            ctx.cfg.remote.timeout))
        except StepFailed as e:
            m["fall"].labels("remote", e.reason).inc()
    else:
        m["fall"].labels("remote", "unconfigured").inc()
    last = ""
    for name, session, url, headers, payload, timeout in targets:
        try:
            up = await session.post(url, json=payload, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=timeout,
                                                                  sock_connect=5))
        except (aiohttp.ClientConnectorError, FileNotFoundError, ConnectionError) as e:
            m["fall"].labels(name, "unavailable").inc()
            last = str(e)
            continue
        except (TimeoutError, aiohttp.ClientError) as e:
            m["fall"].labels(name, "error").inc()
            last = f"{type(e).__name__}: {e}"
            continue
        try:
            if up.status == 503 and name == "hermes" and len(targets) > 1:
                m["fall"].labels(name, "unavailable").inc()
                last = "hermes 503"
                continue
            m["routed"].labels(name).inc()
            resp = await _relay(request, up, name, stream)
            m["latency"].labels(name).observe(time.perf_counter() - t0)
            return resp
        finally:
            up.release()
    m["routed"].labels("none").inc()
    err = ApiError(503, "no_route", "neither Hermes nor a remote API is available"
                   + (f" ({last})" if targets else ""))
    if targets:  # e.g. Hermes restarting (RSS guard, OOM kill): it is back in seconds
        err.headers["Retry-After"] = str(RETRY_AFTER_S)
    raise err


async def _relay(request: web.Request, up: aiohttp.ClientResponse, name: str,
                 stream: bool) -> web.StreamResponse:
    headers = {"X-VX11-Route": name}
    for h in ("Content-Type", "Retry-After"):
        if h in up.headers:
            headers[h] = up.headers[h]
    if not stream or not up.headers.get("Content-Type", "").startswith("text/event-stream"):
        reader = asyncio.ensure_future(up.read())
        gone = asyncio.ensure_future(_gone(request))
        try:
            await asyncio.wait({reader, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not reader.done():  # client went away: drop the upstream, which cancels it
            reader.cancel()
            up.close()
            return web.Response(status=499)
        return web.Response(status=up.status, body=reader.result(), headers=headers)
    resp = web.StreamResponse(status=up.status, headers=headers)
    resp.headers["Cache-Control"] = "no-cache"
    await resp.prepare(request)
    try:
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
    except (ConnectionError, RuntimeError, aiohttp.ClientError):
        up.close()  # client (or upstream) gone: closing the upstream stops generation
    return resp


async def models(request: web.Request) -> web.Response:
    """The models the chat endpoint can reach now."""
    ctx = request.app[CTX]
    data = []
    if hermes_enabled(ctx):
        data.append({"id": os.path.basename(ctx.cfg.hermes.model_path), "object": "model",
                     "owned_by": "vx11-hermes", "created": 0})
    if ctx.cfg.remote.base_url:
        data.append({"id": ctx.cfg.remote.model or "default", "object": "model",
                     "owned_by": "remote", "created": 0})
    return web.json_response({"object": "list", "data": data})


async def hermes_metrics(request: web.Request) -> web.Response:
    """Hermes's /metrics, relayed (the worker has no network of its own)."""
    ctx = request.app[CTX]
    try:
        async with request.app[STATE]["up"].hermes(ctx.cfg.hermes.socket).get(
                "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as up:
            return web.Response(body=await up.read(), status=up.status,
                                headers={"Content-Type": up.headers.get("Content-Type",
                                                                        "text/plain")})
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise ApiError(503, "hermes_unavailable", f"Hermes does not answer: {e}") from e


async def hermes_health(app: web.Application) -> dict:
    """/health contribution: is Hermes enabled, and what its worker says."""
    ctx = app[CTX]
    try:
        enabled = hermes_enabled(ctx)
    except Exception:  # noqa: BLE001 - health must answer even when the DB does not
        return {"hermes": {"enabled": None, "state": "unknown"}}
    info: dict[str, Any] = {"enabled": enabled, "state": "down"}
    try:
        async with app[STATE]["up"].hermes(ctx.cfg.hermes.socket).get(
                "/health", timeout=aiohttp.ClientTimeout(total=1)) as up:
            h = await up.json()
            info["state"] = h.get("model", "unknown")
            if h.get("reason"):
                info["reason"] = h["reason"]
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        pass
    return {"hermes": info}


def setup(app: web.Application) -> None:
    ctx = app[CTX]
    app[STATE] = {"metrics": _metrics(ctx), "up": Upstreams()}
    app.router.add_post("/vx11/route", route)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/vx11/hermes/metrics", hermes_metrics)
    ctx.extras.setdefault("health", []).append(hermes_health)

    async def close(app: web.Application) -> None:
        await app[STATE]["up"].close()

    app.on_cleanup.append(close)
