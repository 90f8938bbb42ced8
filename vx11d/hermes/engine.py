"""The model and its batch: check, load, generate, unload.

Every llama.cpp call on the context (load, the batch loop, close) runs on ONE worker
thread, so the asyncio loop never blocks (its progress is what pings the watchdog) and
calls never overlap. Requests join the batch loop (:mod:`batcher`) and get their text
back through ``call_soon_threadsafe``, once per decode step for all of them (each call
writes to the loop's self-pipe and wakes it up: one per token per request would preempt
a compute thread that often on a small machine); each request's cancel flag, deadline and client
connection are checked on the engine thread before every decode step, so a timeout or a
client that went away stops it within one token while the others go on (and the loop
needs no timer to watch them).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .. import journal
from ..chatapi import ChatError
from .batcher import Batcher, Cancelled, Seq
from .check import CheckResult, inspect_model
from .prompt import Prepared, chat_handler, prepare
from .promptcache import SeqStateCache

log = logging.getLogger("vx11.hermes")


KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml_type
N_BATCH = 512  # tokens per decode step (prompt chunks and every sequence's next token)
__all__ = ["Cancelled", "Engine", "rss_bytes"]


def kv_cache_type(cfg: Any, meta: dict[str, str]) -> str:
    """The KV cache's type for this model: ``hermes.kv_cache_type``, ``auto`` resolved
    (q8_0 with flash attention when every key and value head is a whole number of q8_0
    blocks of 32, as in every common model; else f16: llama.cpp cannot make a q8_0 cache
    of, say, 16-wide heads)."""
    if cfg.kv_cache_type != "auto":
        return cfg.kv_cache_type
    if not cfg.flash_attn:
        return "f16"  # llama.cpp quantizes the V cache only with flash attention
    arch = meta.get("general.architecture", "")
    try:
        width = int(meta[f"{arch}.embedding_length"]) // int(meta[f"{arch}.attention.head_count"])
        k = int(meta.get(f"{arch}.attention.key_length", width))
        v = int(meta.get(f"{arch}.attention.value_length", width))
    except (KeyError, ValueError, ZeroDivisionError):
        return "f16"
    return "q8_0" if k % 32 == 0 and v % 32 == 0 else "f16"


def rss_bytes(proc: str = "/proc") -> int:
    """This process's resident set size in bytes."""
    with open(f"{proc}/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _drop_page_cache(path: str) -> None:
    """The model was read into the worker's own memory: its file's pages in the page cache
    (charged to the unit's cgroup, ~the file's size) are of no further use."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _page_cache_dropped_while_read(path: str, every: float = 0.2):
    """While the model file is read (``mmap`` off), its pages already in the worker's own
    memory are dropped from the page cache every ``every`` seconds and once at the end:
    the cgroup is charged for the file's pages too, and on cgroup v1 (no ``MemoryHigh=``)
    they would pile up to ``MemoryMax`` before the kernel reclaims them."""
    done = threading.Event()

    def drop() -> None:
        while not done.wait(every):
            _drop_page_cache(path)

    t = threading.Thread(target=drop, name="hermes-fadvise", daemon=True)
    t.start()
    try:
        yield
    finally:
        done.set()
        t.join()
        _drop_page_cache(path)


def _name_thread() -> None:
    """The engine thread shows as ``hermes-engine`` in ``top -H`` and ``ps -L`` (and so do
    llama.cpp's compute threads it starts: a thread inherits its creator's name)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(15, b"hermes-engine", 0, 0, 0)  # PR_SET_NAME


def parallel_for(cfg) -> int:
    """``hermes.parallel``, or when 0 the automatic choice: one sequence per 1024 cells
    of context, at most two per core and at most 4."""
    if cfg.parallel:
        return int(cfg.parallel)
    return max(1, min(4, 2 * (os.cpu_count() or 1), int(cfg.n_ctx) // 1024))


def _run_calls(calls: list) -> None:
    for fn, arg in calls:
        try:
            fn(arg)
        except Exception:  # one request's callback must not hold back the others'
            log.exception("a request's text or result callback failed")


class Engine:
    """The model's state machine: unloaded → loading → loaded (or refused), and back."""

    def __init__(self, cfg, metrics: dict, *, check: Callable[..., CheckResult] = inspect_model
                 ) -> None:
        self.cfg = cfg
        self.m = metrics
        self.check = check
        self.state = "unloaded"
        self.reason = ""
        self.kv_type = ""  # the loaded model's KV cache type (kv_cache_type)
        self.llm: Any = None
        self.last_use = time.monotonic()
        self._refused_stat: tuple | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hermes-infer",
                                        initializer=_name_thread)
        self._ctx: Any = None
        self.batcher: Batcher | None = None
        self.handler: Any = None
        self._outbox: dict[asyncio.AbstractEventLoop, list] = {}  # engine thread only
        self._load_lock = asyncio.Lock()

    @property
    def parallel(self) -> int:
        return parallel_for(self.cfg)

    @property
    def model_id(self) -> str:
        return os.path.basename(self.cfg.model_path)

    def created(self) -> int:
        """The model file's mtime (OpenAI's ``created``), 0 when it is missing."""
        try:
            return int(os.stat(self.cfg.model_path).st_mtime)
        except OSError:
            return 0

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.cfg.model_path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    async def ensure_loaded(self) -> None:
        """Load the model if needed (checked first); raises RuntimeError when refused."""
        async with self._load_lock:
            if self.state == "loaded":
                return
            if self.state == "refused" and self._stat() == self._refused_stat:
                raise RuntimeError(self.reason)
            self.state, self.reason = "loading", ""
            t0 = time.monotonic()
            cfg = self.cfg
            result = await asyncio.to_thread(self.check, cfg.model_path, cfg.model_sha256,
                                             int(cfg.max_model_size))
            if not result.ok:
                self._refuse(result.reason)
                raise RuntimeError(self.reason)
            try:
                self.llm = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._load)
            except Exception as e:  # llama.cpp says ValueError; anything else too
                self._refuse(f"llama.cpp cannot load the model: {type(e).__name__}: {e}")
                raise RuntimeError(self.reason) from e
            took = time.monotonic() - t0
            self.state = "loaded"
            self.last_use = time.monotonic()
            self.m["loaded"].set(1)
            self.m["refused"].set(0)
            self.m["load_seconds"].set(took)
            journal.event(log, "hermes_model_loaded", "model %s loaded in %.2fs (KV cache %s)",
                          self.model_id, took, self.kv_type, model=self.model_id,
                          load_seconds=round(took, 3), kv_cache_type=self.kv_type)

    def _load(self) -> Any:
        import llama_cpp
        from llama_cpp import Llama

        cfg = self.cfg
        # The Llama object gives the model, its tokenizer and its chat handler (chat_format
        # None: the GGUF's tokenizer.chat_template, checked before the load); its own
        # one-sequence context is made tiny and replaced by the batch's context.
        reading = (contextlib.nullcontext() if cfg.mmap
                   else _page_cache_dropped_while_read(cfg.model_path))
        with reading:
            llm = Llama(model_path=cfg.model_path, n_ctx=64, n_batch=64, n_ubatch=64,
                        use_mmap=cfg.mmap,
                        n_threads=cfg.n_threads or None, chat_format=cfg.chat_format or None,
                        flash_attn=cfg.flash_attn, verbose=False)
        try:
            llm._ctx.close()
            params = type(llm.context_params).from_buffer_copy(llm.context_params)
            params.n_ctx = cfg.n_ctx
            params.n_batch = params.n_ubatch = N_BATCH
            params.n_seq_max = self.parallel
            params.kv_unified = False  # a KV stream per sequence (see batcher)
            self.kv_type = kv_cache_type(cfg, llm.metadata)
            params.type_k = params.type_v = KV_TYPES[self.kv_type]
            ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
            if not ctx:
                hint = "" if self.kv_type == "f16" else (
                    f" with a {self.kv_type} KV cache (it needs attention heads a multiple "
                    "of 32 wide: try hermes.kv_cache_type: f16)")
                raise ValueError(f"llama.cpp cannot make a context of {cfg.n_ctx} cells "
                                 f"for {self.parallel} sequences{hint}")
        except BaseException:
            llm.close()
            raise
        self._ctx = ctx
        self.handler = chat_handler(llm)
        cache = SeqStateCache(int(cfg.prompt_cache)) if int(cfg.prompt_cache) > 0 else None
        self.batcher = Batcher(llm, ctx, self.parallel, N_BATCH, self.m, cache,
                               kernel_by_shape=self.kv_type == "f16")  # quantized: one kernel
        self.batcher.after_step = self._deliver
        self.m["kv_total"].set(int(llama_cpp.llama_n_ctx(ctx)))
        self.m["kv_used"].set(0)
        return llm

    def _post(self, loop: asyncio.AbstractEventLoop, fn: Callable, arg: Any) -> None:
        """On the engine thread: ``fn(arg)`` to run on ``loop`` after this step."""
        self._outbox.setdefault(loop, []).append((fn, arg))

    def _deliver(self) -> None:
        """After each step: one wake-up per loop for everything the step produced, in
        order (text before the result that ends a request)."""
        if not self._outbox:
            return
        box, self._outbox = self._outbox, {}
        for loop, calls in box.items():
            with contextlib.suppress(RuntimeError):  # a loop closed meanwhile
                loop.call_soon_threadsafe(_run_calls, calls)

    def _refuse(self, reason: str) -> None:
        self.state, self.reason = "refused", reason
        self._refused_stat = self._stat()
        self.m["refused"].set(1)
        self.m["loaded"].set(0)
        journal.event(log, "hermes_model_refused", "model %s refused: %s", self.cfg.model_path,
                      reason, level=logging.ERROR, model=self.cfg.model_path, reason=reason)

    async def unload(self, reason: str) -> None:
        """Close the model and give its memory back (Llama.close, gc, malloc_trim)."""
        async with self._load_lock:
            if self.llm is None:
                return
            before = rss_bytes()
            await asyncio.get_running_loop().run_in_executor(self._pool, self._close)
            self.state = "unloaded"
            self.m["loaded"].set(0)
            self.m["unloads"].labels(reason).inc()
            journal.event(log, "hermes_model_unloaded", "model unloaded (%s): RSS %d → %d MiB",
                          reason, before >> 20, rss_bytes() >> 20, reason=reason)

    def _close(self) -> None:
        import llama_cpp

        llm, self.llm = self.llm, None
        if self.batcher is not None:
            self.batcher.close()
            self.batcher = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)  # before its model
            self._ctx = None
        self.handler = None
        llm.close()
        del llm
        gc.collect()
        _malloc_trim()
        self.m["kv_used"].set(0)

    def forget_refusal(self) -> None:
        """After a config reload: check the model again on next use."""
        if self.state == "refused":
            self.state, self.reason, self._refused_stat = "unloaded", "", None
            self.m["refused"].set(0)

    async def prepare(self, kwargs: dict) -> Prepared:
        """The request's prompt tokens, stop strings, sampler settings and grammar (off
        the loop, beside the batch); :class:`ChatError` (400) when it cannot run."""
        llm, handler = self.llm, self.handler
        if llm is None:
            raise RuntimeError("model is not loaded")
        p = await asyncio.to_thread(prepare, llm, handler, kwargs)
        n_ctx = self.batcher.n_ctx_seq if self.batcher is not None else self.cfg.n_ctx
        if len(p.tokens) >= n_ctx - 1:
            raise ChatError(400, f"the prompt is {len(p.tokens)} tokens; a request's context "
                            f"holds {n_ctx} (hermes.n_ctx / hermes.parallel)",
                            param="messages", code="context_length_exceeded")
        return p

    async def generate(self, prep: Prepared, cancel: threading.Event,
                       on_text: Callable[[str], None], *, on_loop: bool = True,
                       gone: Callable[[], bool] | None = None) -> dict:
        """Join the batch and generate; ``on_text`` gets each piece of the answer, on the
        loop (or, with ``on_loop=False``, on the engine thread: it must then be
        thread-safe, e.g. a list append — no loop wake-up per token). ``gone``, when
        given, is called on the engine thread before every step (it must only read:
        e.g. a deadline, a transport's closing flag); True stops the request as
        ``cancel`` does, without the loop having to wake up to look.

        Returns ``{"prompt_tokens", "completion_tokens", "finish_reason"}``; raises
        Cancelled when ``cancel`` was set.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self.last_use = time.monotonic()

        def settle(result: Any) -> None:
            if fut.done():
                return
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

        def done(result: Any) -> None:
            self._post(loop, settle, result)

        emit = on_text
        if on_loop:
            def emit(text: str) -> None:
                self._post(loop, on_text, text)

        batcher = self.batcher
        if batcher is None:
            raise RuntimeError("model is not loaded")
        if batcher.submit(Seq(prep=prep, cancel=cancel, emit=emit, done=done, gone=gone)):
            self._pool.submit(batcher.run)
        try:
            return await fut
        finally:
            self.last_use = time.monotonic()

    def shutdown(self) -> None:
        if self.llm is not None:
            self._pool.submit(self._close).result()
        self._pool.shutdown(wait=True)
