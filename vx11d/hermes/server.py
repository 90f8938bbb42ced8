"""Hermes's HTTP API on its UNIX socket: /health, /v1/chat/completions, /v1/models, /metrics.

Only the gateway reaches this socket (the unit has no network), so there is no token
here; the socket is mode 0660, group vx11. Up to ``parallel`` requests generate at once,
decoded together (:mod:`batcher`); up to ``queue_max`` wait behind them; more get 503
with Retry-After. /health is a readiness probe like llama-server's: 503 ``loading`` (with
Retry-After) while the model loads or ``draining`` before an RSS-guard restart, else 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from .. import journal
from ..chatapi import ChatError, error_body, parse_chat
from .engine import Cancelled, Engine, rss_bytes

log = logging.getLogger("vx11.hermes")

OUTCOMES = ("ok", "cancelled", "timeout", "error", "busy", "refused", "draining")
UNLOAD_REASONS = ("idle", "rss_guard", "shutdown", "reload")
RESTART_REASONS = ("rss_guard", "oom")  # oom: the kernel killed it (seen at the next start)


def new_metrics(registry) -> dict:
    """Hermes's metrics in ``registry`` (names vx11_hermes_*, base units)."""
    m = {
        "requests": Counter("vx11_hermes_requests", "chat requests by outcome", ["outcome"],
                            registry=registry),
        "duration": Histogram("vx11_hermes_request_duration_seconds", "chat request "
                              "duration (queue wait included)", registry=registry,
                              buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60,
                                       120, 300)),
        "prompt_tokens": Counter("vx11_hermes_prompt_tokens", "prompt tokens evaluated "
                                 "(cached ones not counted)", registry=registry),
        "prompt_cached_tokens": Counter("vx11_hermes_prompt_cached_tokens", "prompt "
                                        "tokens reused from the KV cache or a saved state",
                                        registry=registry),
        "prompt_seconds": Counter("vx11_hermes_prompt_seconds", "decode time spent on "
                                  "prompt tokens (a mixed batch is shared by token count)",
                                  registry=registry),
        "generated_tokens": Counter("vx11_hermes_generated_tokens", "tokens generated",
                                    registry=registry),
        "generated_seconds": Counter("vx11_hermes_generated_seconds", "decode time spent "
                                     "on generated tokens", registry=registry),
        "batch_size": Histogram("vx11_hermes_batch_sequences", "sequences in each decode "
                                "step (continuous batching)", registry=registry,
                                buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64)),
        "kv_used": Gauge("vx11_hermes_kv_cache_used_cells", "KV cache cells holding "
                         "tokens (running and cached sequences)", registry=registry),
        "kv_total": Gauge("vx11_hermes_kv_cache_cells", "KV cache cells of the loaded "
                          "model's context (hermes.n_ctx)", registry=registry),
        "parallel": Gauge("vx11_hermes_parallel_sequences", "requests decoded together at "
                          "most (hermes.parallel)", registry=registry),
        "tps": Gauge("vx11_hermes_tokens_per_second", "generation speed of the last "
                     "completed request", registry=registry),
        "loaded": Gauge("vx11_hermes_model_loaded", "1 when the model is in memory",
                        registry=registry),
        "refused": Gauge("vx11_hermes_model_refused", "1 when the configured model was "
                         "refused by the pre-load checks", registry=registry),
        "load_seconds": Gauge("vx11_hermes_model_load_duration_seconds", "duration of the "
                              "last model load (checks included)", registry=registry),
        "queue": Gauge("vx11_hermes_queue_depth", "requests waiting for a free sequence "
                       "slot", registry=registry),
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


def _err(status: int, code: str, message: str, headers: dict | None = None, *,
         param: str | None = None) -> web.Response:
    """An error in OpenAI's shape (the gateway relays it as is)."""
    return web.json_response(error_body(status, message, param=param, code=code),
                             status=status, headers=headers)


class Worker:
    """The request side: slots, queue, deadline, cancellation, draining for the RSS guard."""

    def __init__(self, cfg, engine: Engine, metrics: dict, registry) -> None:
        self.cfg = cfg
        self.engine = engine
        self.m = metrics
        self.registry = registry
        self.slots = asyncio.Semaphore(engine.parallel)
        self.m["parallel"].set(engine.parallel)
        self.waiting = 0
        self.running = 0
        self.draining = False
        self.active: set[threading.Event] = set()

    def busy(self) -> bool:
        return self.running > 0 or self.waiting > 0

    def resize(self) -> None:
        """After a reload: a new ``parallel`` takes effect when nothing runs."""
        n = self.engine.parallel
        if not self.busy() and self.slots._value != n:
            self.slots = asyncio.Semaphore(n)
            self.m["parallel"].set(n)

    async def health(self, request: web.Request) -> web.Response:
        e = self.engine
        status, code, headers = "ok", 200, None
        if self.draining:
            status, code, headers = "draining", 503, {"Retry-After": "5"}
        elif e.state == "loading":
            status, code, headers = "loading", 503, {"Retry-After": "5"}
        return web.json_response({
            "status": status, "component": "hermes",
            "model": e.state, "reason": e.reason, "model_id": e.model_id,
            "kv_cache_type": e.kv_type if e.state == "loaded" else "",
            "queue": self.waiting, "running": self.running, "parallel": e.parallel,
            "rss_bytes": rss_bytes(),
            "idle_seconds": round(time.monotonic() - e.last_use, 1)}, status=code,
            headers=headers)

    async def metrics(self, request: web.Request) -> web.Response:
        self.m["rss"].set(rss_bytes())
        return web.Response(body=generate_latest(self.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: web.Request) -> web.Response:
        e = self.engine
        return web.json_response({"object": "list", "data": [
            {"id": e.model_id, "object": "model", "owned_by": "vx11-hermes",
             "created": e.created(), "state": e.state}]})

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
            req = parse_chat(body, self.cfg.max_tokens)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _err(400, "invalid_json", "body is not valid JSON"), "error"
        except ChatError as e:
            return _err(e.status, e.code or "invalid_request", e.message,
                        param=e.param), "error"
        kwargs, stream = req.kwargs, req.stream
        retry = {"Retry-After": "5"}
        if self.draining:
            return _err(503, "draining", "worker is restarting (RSS guard)", retry), "draining"
        if self.slots.locked() and self.waiting >= self.cfg.queue_max:
            return _err(503, "queue_full", f"{self.running} requests generating and "
                        f"{self.waiting} waiting", retry), "busy"
        deadline = time.monotonic() + self.cfg.request_timeout
        self.waiting += 1
        self.m["queue"].set(self.waiting)
        slots = self.slots
        acquired = False
        try:
            async with asyncio.timeout(self.cfg.request_timeout):
                await slots.acquire()
                acquired = True
        except TimeoutError:
            return _err(504, "timeout", "request timed out waiting in the queue"), "timeout"
        finally:
            self.waiting -= 1
            self.m["queue"].set(self.waiting)
        waited = {"X-VX11-Queue-Wait-Ms":
                  f"{(time.monotonic() - deadline + self.cfg.request_timeout) * 1000:.1f}"}
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
            try:
                prep = await self.engine.prepare(kwargs)
            except ChatError as e:
                return _err(e.status, e.code or "invalid_request", e.message,
                            param=e.param), "error"
            if stream:
                return await self._stream(request, prep, deadline, req.include_usage,
                                          waited)
            return await self._complete(request, prep, deadline, waited)
        finally:
            if acquired:
                self.running = max(0, self.running - 1)
                self.m["running"].set(self.running)
                slots.release()

    def _account(self, counts: dict, started: float) -> None:
        gen = counts["completion_tokens"]
        took = time.monotonic() - started
        if gen and took > 0:
            self.m["tps"].set(gen / took)

    def cancel_all(self) -> None:
        """Stop every generation in flight (shutdown)."""
        for ev in list(self.active):
            ev.set()

    async def _run(self, request, prep, deadline, on_text, cancel=None, on_loop=True):
        """Generate until done, deadline, or the client going away (or ``cancel``)."""
        cancel = cancel or threading.Event()
        self.active.add(cancel)
        try:
            return await self._generate(request, prep, deadline, on_text, cancel, on_loop)
        finally:
            self.active.discard(cancel)

    async def _generate(self, request, prep, deadline, on_text, cancel, on_loop):
        started = time.monotonic()

        def gone() -> bool:  # on the engine thread, before each step: reads only
            transport = request.transport
            return (transport is None or transport.is_closing()
                    or time.monotonic() >= deadline)

        task = asyncio.ensure_future(self.engine.generate(prep, cancel, on_text,
                                                          on_loop=on_loop, gone=gone))
        try:
            counts = await task
        except asyncio.CancelledError:
            cancel.set()
            with contextlib.suppress(BaseException):
                await task
            raise
        except Cancelled:
            if time.monotonic() >= deadline:
                return None, "timeout"
            return None, "cancelled"
        self._account(counts, started)
        return counts, "ok"

    async def _complete(self, request, prep, deadline, headers=None
                        ) -> tuple[web.StreamResponse, str]:
        parts: list[str] = []
        try:
            counts, outcome = await self._run(request, prep, deadline, parts.append,
                                              on_loop=False)  # list.append: thread-safe
        except Exception as e:
            log.exception("generation failed")
            return _err(500, "generation_failed", f"{type(e).__name__}: {e}"), "error"
        if outcome == "timeout":
            return _err(504, "timeout", f"generation exceeded "
                        f"{self.cfg.request_timeout:g}s"), outcome
        if counts is None or outcome == "cancelled":
            return _err(499, "cancelled", "client went away"), "cancelled"
        return web.json_response({
            "id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion",
            "created": int(time.time()), "model": self.engine.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant",
                                                 "content": "".join(parts)},
                         "finish_reason": counts["finish_reason"] or "stop"}],
            "usage": _usage(counts)}, headers=headers), "ok"

    async def _stream(self, request, prep, deadline, include_usage: bool = False,
                      headers=None) -> tuple[web.StreamResponse, str]:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache", **(headers or {})})
        await resp.prepare(request)
        out: asyncio.Queue = asyncio.Queue()
        cid = "chatcmpl-" + uuid.uuid4().hex
        head = json.dumps({"id": cid, "object": "chat.completion.chunk",
                           "created": int(time.time()), "model": self.engine.model_id})[:-1]

        def chunk(delta: dict | str, finish: str | None = None) -> bytes:
            d = json.dumps(delta if isinstance(delta, dict) else {"content": delta})
            return (f'data: {head}, "choices": [{{"index": 0, "delta": {d}, '
                    f'"finish_reason": {json.dumps(finish)}}}]}}\n\n').encode()

        def on_text(text: str) -> None:
            out.put_nowait(chunk(text))

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

        out.put_nowait(chunk({"role": "assistant"}))
        pumper = asyncio.ensure_future(pump())
        counts = None
        try:
            counts, outcome = await self._run(request, prep, deadline, on_text, cancel)
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
        if counts is not None:
            out.put_nowait(chunk({}, counts["finish_reason"] or "stop"))
        if include_usage and counts is not None:
            out.put_nowait(b"data: " + json.dumps({
                "id": cid, "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self.engine.model_id, "choices": [],
                "usage": _usage(counts)}).encode() + b"\n\n")
        out.put_nowait(b"data: [DONE]\n\n")
        out.put_nowait(None)
        await pumper
        if not broken:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.write_eof()
        return resp, outcome


def _usage(counts: dict) -> dict:
    return {"prompt_tokens": counts["prompt_tokens"],
            "completion_tokens": counts["completion_tokens"],
            "total_tokens": counts["prompt_tokens"] + counts["completion_tokens"]}


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
