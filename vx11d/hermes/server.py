"""Hermes's HTTP API on its UNIX socket: /health, /v1/chat/completions, /v1/models, /metrics.

Only the gateway reaches this socket (the unit has no network), so there is no token
here; the socket is mode 0660, group vx11. One request generates at a time; up to
``queue_max`` wait behind it; more get 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from .. import journal
from .engine import Cancelled, Engine, rss_bytes

log = logging.getLogger("vx11.hermes")

OUTCOMES = ("ok", "cancelled", "timeout", "error", "busy", "refused", "draining")
UNLOAD_REASONS = ("idle", "rss_guard", "shutdown", "reload")
RESTART_REASONS = ("rss_guard", "oom")  # oom: the kernel killed it (seen at the next start)
FLOAT_PARAMS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                "repeat_penalty")
INT_PARAMS = ("top_k", "seed")


def new_metrics(registry) -> dict:
    """Hermes's metrics in ``registry`` (names vx11_hermes_*, base units)."""
    m = {
        "requests": Counter("vx11_hermes_requests", "chat requests by outcome", ["outcome"],
                            registry=registry),
        "duration": Histogram("vx11_hermes_request_duration_seconds", "chat request "
                              "duration (queue wait included)", registry=registry,
                              buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60,
                                       120, 300)),
        "prompt_tokens": Counter("vx11_hermes_prompt_tokens", "prompt tokens processed",
                                 registry=registry),
        "generated_tokens": Counter("vx11_hermes_generated_tokens", "tokens generated",
                                    registry=registry),
        "tps": Gauge("vx11_hermes_tokens_per_second", "generation speed of the last "
                     "completed request", registry=registry),
        "loaded": Gauge("vx11_hermes_model_loaded", "1 when the model is in memory",
                        registry=registry),
        "refused": Gauge("vx11_hermes_model_refused", "1 when the configured model was "
                         "refused by the pre-load checks", registry=registry),
        "load_seconds": Gauge("vx11_hermes_model_load_duration_seconds", "duration of the "
                              "last model load (checks included)", registry=registry),
        "queue": Gauge("vx11_hermes_queue_depth", "requests waiting for the inference slot",
                       registry=registry),
        "running": Gauge("vx11_hermes_requests_running", "requests generating now",
                         registry=registry),
        "rss": Gauge("vx11_hermes_rss_bytes", "resident memory of the worker",
                     registry=registry),
        "rss_limit": Gauge("vx11_hermes_rss_limit_bytes", "the RSS guard's limit",
                           registry=registry),
        "unloads": Counter("vx11_hermes_unloads", "model unloads by reason", ["reason"],
                           registry=registry),
        "restarts": Counter("vx11_hermes_restarts", "worker exits for a restart by reason "
                            "(kept across restarts in the runtime directory)", ["reason"],
                            registry=registry),
    }
    for o in OUTCOMES:
        m["requests"].labels(o)
    for r in UNLOAD_REASONS:
        m["unloads"].labels(r)
    for r in RESTART_REASONS:
        m["restarts"].labels(r)
    return m


class BadRequest(Exception):
    pass


def _err(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status,
                             headers=headers)


def chat_kwargs(body: Any, max_tokens_cap: int) -> tuple[dict, bool]:
    """llama-cpp-python kwargs from an OpenAI chat body (BadRequest when malformed)."""
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages must be a non-empty list")
    clean = []
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) \
                or not isinstance(m.get("content"), str):
            raise BadRequest("each message needs a string role and a string content")
        if m["role"] not in ("system", "user", "assistant"):
            raise BadRequest(f"unsupported role {m['role']!r}")
        clean.append({"role": m["role"], "content": m["content"]})
    kw: dict[str, Any] = {"messages": clean}
    mt = body.get("max_tokens", body.get("max_completion_tokens"))
    if mt is None:
        mt = max_tokens_cap
    if not isinstance(mt, int) or isinstance(mt, bool) or mt < 1:
        raise BadRequest("max_tokens must be a positive integer")
    kw["max_tokens"] = min(mt, max_tokens_cap)
    for k in FLOAT_PARAMS:
        if body.get(k) is not None:
            if not isinstance(body[k], int | float) or isinstance(body[k], bool):
                raise BadRequest(f"{k} must be a number")
            kw[k] = float(body[k])
    for k in INT_PARAMS:
        if body.get(k) is not None:
            if not isinstance(body[k], int) or isinstance(body[k], bool):
                raise BadRequest(f"{k} must be an integer")
            kw[k] = body[k]
    stop = body.get("stop")
    if stop is not None:
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) \
                or len(stop) > 8:
            raise BadRequest("stop must be a string or a list of up to 8 strings")
        kw["stop"] = stop
    bias = body.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict) or len(bias) > 4096:
            raise BadRequest("logit_bias must be an object of at most 4096 entries")
        try:
            kw["logit_bias"] = {int(k): float(v) for k, v in bias.items()}
        except (TypeError, ValueError) as e:
            raise BadRequest("logit_bias maps token ids to numbers") from e
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("stream must be a boolean")
    return kw, stream


class Worker:
    """The request side: queue, deadline, cancellation, draining for the RSS guard."""

    def __init__(self, cfg, engine: Engine, metrics: dict, registry) -> None:
        self.cfg = cfg
        self.engine = engine
        self.m = metrics
        self.registry = registry
        self.slot = asyncio.Lock()
        self.waiting = 0
        self.running = 0
        self.draining = False
        self.active: set[threading.Event] = set()

    def busy(self) -> bool:
        return self.running > 0 or self.waiting > 0

    async def health(self, request: web.Request) -> web.Response:
        e = self.engine
        return web.json_response({
            "status": "draining" if self.draining else "ok", "component": "hermes",
            "model": e.state, "reason": e.reason, "model_id": e.model_id,
            "queue": self.waiting, "running": self.running, "rss_bytes": rss_bytes(),
            "idle_seconds": round(time.monotonic() - e.last_use, 1)})

    async def metrics(self, request: web.Request) -> web.Response:
        self.m["rss"].set(rss_bytes())
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.engine.model_id, "object": "model", "owned_by": "vx11-hermes",
             "created": 0}]})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        t0 = time.monotonic()
        outcome = "error"
        try:
            resp, outcome = await self._chat(request)
            return resp
        finally:
            self.m["requests"].labels(outcome).inc()
            self.m["duration"].observe(time.monotonic() - t0)

    async def _chat(self, request: web.Request) -> tuple[web.StreamResponse, str]:
        try:
            body = json.loads(await request.read())
            kwargs, stream = chat_kwargs(body, self.cfg.max_tokens)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _err(400, "bad_json", "body is not valid JSON"), "error"
        except BadRequest as e:
            return _err(422, "bad_request", str(e)), "error"
        retry = {"Retry-After": "5"}
        if self.draining:
            return _err(503, "draining", "worker is restarting (RSS guard)", retry), "draining"
        if self.slot.locked() and self.waiting >= self.cfg.queue_max:
            return _err(503, "queue_full", f"{self.waiting} requests already waiting",
                        retry), "busy"
        deadline = time.monotonic() + self.cfg.request_timeout
        self.waiting += 1
        self.m["queue"].set(self.waiting)
        acquired = False
        try:
            async with asyncio.timeout(self.cfg.request_timeout):
                await self.slot.acquire()
                acquired = True
        except TimeoutError:
            return _err(504, "timeout", "request timed out waiting in the queue"), "timeout"
        finally:
            self.waiting -= 1
            self.m["queue"].set(self.waiting)
        try:
            if self.draining:
                return _err(503, "draining", "worker is restarting (RSS guard)",
                            retry), "draining"
            self.running += 1
            self.m["running"].set(self.running)
            try:
                await self.engine.ensure_loaded()
            except RuntimeError as e:
                return _err(503, "model_refused", str(e), {"Retry-After": "60"}), "refused"
            if stream:
                return await self._stream(request, kwargs, deadline)
            return await self._complete(request, kwargs, deadline)
        finally:
            if acquired:
                self.running = max(0, self.running - 1)
                self.m["running"].set(self.running)
                self.slot.release()

    def _account(self, counts: dict, started: float) -> None:
        gen = counts["completion_tokens"]
        self.m["prompt_tokens"].inc(counts["prompt_tokens"])
        self.m["generated_tokens"].inc(gen)
        took = time.monotonic() - started
        if gen and took > 0:
            self.m["tps"].set(gen / took)

    def cancel_all(self) -> None:
        """Stop every generation in flight (shutdown)."""
        for ev in list(self.active):
            ev.set()

    async def _run(self, request, kwargs, deadline, on_chunk, cancel=None, on_loop=True):
        """Generate until done, deadline, or the client going away (or ``cancel``)."""
        cancel = cancel or threading.Event()
        self.active.add(cancel)
        try:
            return await self._generate(request, kwargs, deadline, on_chunk, cancel, on_loop)
        finally:
            self.active.discard(cancel)

    async def _generate(self, request, kwargs, deadline, on_chunk, cancel, on_loop):
        started = time.monotonic()
        task = asyncio.ensure_future(self.engine.generate(kwargs, cancel, on_chunk,
                                                          on_loop=on_loop))
        outcome = "ok"
        try:
            while not task.done():
                left = deadline - time.monotonic()
                if left <= 0:
                    outcome = "timeout"
                    break
                done, _ = await asyncio.wait({task}, timeout=min(0.1, left))
                if done:
                    break
                transport = request.transport
                if transport is None or transport.is_closing() or cancel.is_set():
                    outcome = "cancelled"
                    break
        except asyncio.CancelledError:
            cancel.set()
            with contextlib.suppress(BaseException):
                await task
            raise
        if outcome != "ok":
            cancel.set()
        try:
            counts = await task
        except Cancelled:
            return None, outcome if outcome != "ok" else "cancelled"
        self._account(counts, started)
        return counts, outcome

    async def _complete(self, request, kwargs, deadline) -> tuple[web.StreamResponse, str]:
        parts: list[str] = []
        role = "assistant"

        def on_chunk(chunk: dict) -> None:
            delta = chunk["choices"][0].get("delta", {}) if chunk.get("choices") else {}
            if delta.get("content"):
                parts.append(delta["content"])

        try:
            counts, outcome = await self._run(request, kwargs, deadline, on_chunk,
                                              on_loop=False)  # list.append: thread-safe
        except Exception as e:
            log.exception("generation failed")
            return _err(500, "generation_failed", f"{type(e).__name__}: {e}"), "error"
        if outcome == "timeout":
            return _err(504, "timeout", f"generation exceeded "
                        f"{self.cfg.request_timeout:g}s"), outcome
        if counts is None or outcome == "cancelled":
            return _err(499, "cancelled", "client went away"), "cancelled"
        usage = {"prompt_tokens": counts["prompt_tokens"],
                 "completion_tokens": counts["completion_tokens"],
                 "total_tokens": counts["prompt_tokens"] + counts["completion_tokens"]}
        return web.json_response({
            "id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion",
            "created": int(time.time()), "model": self.engine.model_id,
            "choices": [{"index": 0, "message": {"role": role, "content": "".join(parts)},
                         "finish_reason": counts["finish_reason"] or "stop"}],
            "usage": usage}), "ok"

    async def _stream(self, request, kwargs, deadline) -> tuple[web.StreamResponse, str]:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        out: asyncio.Queue = asyncio.Queue()
        model = self.engine.model_id

        def on_chunk(chunk: dict) -> None:
            chunk["model"] = model
            out.put_nowait(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        broken = False
        cancel = threading.Event()

        async def pump() -> None:
            nonlocal broken
            while True:
                data = await out.get()
                if data is None:
                    return
                if broken:
                    continue
                try:
                    await resp.write(data)
                except (ConnectionError, RuntimeError):
                    broken = True
                    cancel.set()  # the client went away: stop generating

        pumper = asyncio.ensure_future(pump())
        try:
            _counts, outcome = await self._run(request, kwargs, deadline, on_chunk, cancel)
        except Exception as e:
            log.exception("generation failed")
            outcome = "error"
            out.put_nowait(b"data: " + json.dumps({"error": {"message": str(e)}}).encode()
                           + b"\n\n")
        if outcome == "timeout":
            out.put_nowait(b"data: " + json.dumps({"error": {
                "message": f"generation exceeded {self.cfg.request_timeout:g}s",
                "code": "timeout"}}).encode() + b"\n\n")
        if broken:
            outcome = "cancelled"
        out.put_nowait(b"data: [DONE]\n\n")
        out.put_nowait(None)
        await pumper
        if not broken:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write_eof()
        return resp, outcome


def build_app(worker: Worker) -> web.Application:
    """The worker's aiohttp app (served on the UNIX socket)."""
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_get("/health", worker.health)
    app.router.add_get("/metrics", worker.metrics)
    app.router.add_get("/v1/models", worker.models)
    app.router.add_post("/v1/chat/completions", worker.chat)
    return app


def log_exit(reason: str, rss: int, limit: int) -> None:
    journal.event(log, "hermes_rss_guard", "RSS %d MiB above the guard's %d MiB: draining "
                  "and exiting for a restart", rss >> 20, limit >> 20, level=logging.ERROR,
                  reason=reason, rss_bytes=rss, limit_bytes=limit)
