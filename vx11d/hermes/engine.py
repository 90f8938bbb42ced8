"""The model and its one inference slot: check, load, generate, unload.

Every llama.cpp call (load, generate, close) runs on ONE worker thread, so the asyncio
loop never blocks (its progress is what pings the watchdog) and calls never overlap.
Generation streams chunks back to the loop through ``call_soon_threadsafe``; a cancel
flag is checked before every sampled token (in a logits processor, which llama-cpp-python
calls once per token, and which then forces end-of-sequence) and between chunks, so a
timeout or a client that went away stops generation within one token.
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
from .check import CheckResult, inspect_model

log = logging.getLogger("vx11.hermes")


class Cancelled(Exception):
    """Generation stopped because its request was cancelled or timed out."""


def rss_bytes(proc: str = "/proc") -> int:
    """This process's resident set size in bytes."""
    with open(f"{proc}/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _record_samples(llm: Any) -> None:
    """Remember the last sampled token on ``llm`` (for exact usage counts)."""
    sample = llm.sample

    def recording(*args: Any, **kwargs: Any) -> int:
        token = sample(*args, **kwargs)
        llm._vx11_last_token = token
        return token

    llm.sample = recording
    llm._vx11_last_token = None


def _is_eog(llm: Any, token: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))


class Engine:
    """The model's state machine: unloaded → loading → loaded (or refused), and back."""

    def __init__(self, cfg, metrics: dict, *, check: Callable[..., CheckResult] = inspect_model
                 ) -> None:
        self.cfg = cfg
        self.m = metrics
        self.check = check
        self.state = "unloaded"
        self.reason = ""
        self.llm: Any = None
        self.last_use = time.monotonic()
        self._refused_stat: tuple | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hermes-infer")
        self._load_lock = asyncio.Lock()

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
            journal.event(log, "hermes_model_loaded", "model %s loaded in %.2fs",
                          self.model_id, took, model=self.model_id, load_seconds=round(took, 3))

    def _load(self) -> Any:
        from llama_cpp import Llama

        cfg = self.cfg
        # chat_format None: the GGUF's own tokenizer.chat_template (checked before the
        # load), with its EOS token as the stop token
        llm = Llama(model_path=cfg.model_path, n_ctx=cfg.n_ctx,
                    n_threads=cfg.n_threads or None, chat_format=cfg.chat_format or None,
                    flash_attn=cfg.flash_attn, verbose=False)
        if int(cfg.prompt_cache) > 0:
            from .promptcache import PromptCache, lean_state_io

            # llama.cpp keeps the KV of the LAST prompt (a shared prefix is not evaluated
            # again); this keeps the states of earlier conversations too, LRU, bounded
            llm.set_cache(PromptCache(capacity_bytes=int(cfg.prompt_cache)))
            lean_state_io(llm)
        _record_samples(llm)
        return llm

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
        llm, self.llm = self.llm, None
        for wrapper in ("sample", "save_state", "load_state"):
            llm.__dict__.pop(wrapper, None)  # each wrapper's cycle back to llm
        llm.cache = None  # the saved prompt states go now, not at some later gc
        llm.close()
        del llm
        gc.collect()
        _malloc_trim()

    def forget_refusal(self) -> None:
        """After a config reload: check the model again on next use."""
        if self.state == "refused":
            self.state, self.reason, self._refused_stat = "unloaded", "", None
            self.m["refused"].set(0)

    async def generate(self, kwargs: dict, cancel: threading.Event,
                       on_chunk: Callable[[dict], None], *, on_loop: bool = True) -> dict:
        """Stream a chat completion on the worker thread; ``on_chunk`` runs on the loop
        (or, with ``on_loop=False``, on the worker thread: it must then be thread-safe,
        e.g. a list append — no loop wake-up per token).

        Returns ``{"prompt_tokens", "completion_tokens", "finish_reason"}``; raises
        Cancelled when ``cancel`` was set.
        """
        loop = asyncio.get_running_loop()
        self.last_use = time.monotonic()

        def emit(chunk: dict) -> None:
            loop.call_soon_threadsafe(on_chunk, chunk)

        if not on_loop:
            emit = on_chunk

        try:
            return await loop.run_in_executor(self._pool, self._run, kwargs, cancel, emit)
        finally:
            self.last_use = time.monotonic()

    def _run(self, kwargs: dict, cancel: threading.Event, emit: Callable) -> dict:
        import numpy as np
        from llama_cpp import LogitsProcessorList

        llm = self.llm
        if llm is None:
            raise RuntimeError("model is not loaded")
        counts = {"prompt_tokens": 0, "completion_tokens": 0, "finish_reason": None}
        llm._vx11_last_token = None
        # llama-cpp-python 0.3.x drops every logits processor when logit_bias is also
        # given (``logits_processor = logits_processor.extend(...)`` is None), so the
        # bias is applied here instead of being passed through.
        bias = kwargs.pop("logit_bias", None) or {}
        bias_ids = np.fromiter(bias.keys(), dtype=np.intp, count=len(bias))
        bias_vals = np.fromiter(bias.values(), dtype=np.float32, count=len(bias))

        # llama-cpp-python 0.3.x also overruns max_tokens while the text so far ends in an
        # incomplete UTF-8 sequence (it keeps sampling until the context is full, then
        # llama_decode fails): past the budget, or near the end of the context, only the
        # end-of-sequence token may be sampled.
        max_tokens = kwargs.get("max_tokens") or 1 << 30
        n_ctx = llm.n_ctx()
        eos = llm.token_eos()

        # This runs inside a ctypes sampler callback: an exception raised here is printed
        # and IGNORED by ctypes (generation goes on), so a cancel is honoured the same way
        # as the budget: by forcing end-of-sequence, which ends generation at this token.
        def watch(input_ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
            if not counts["prompt_tokens"]:
                counts["prompt_tokens"] = len(input_ids)
            counts["completion_tokens"] += 1
            if cancel.is_set() or counts["completion_tokens"] > max_tokens \
                    or len(input_ids) >= n_ctx - 2:
                counts["forced_stop"] = True
                scores = np.full_like(scores, -np.inf)
                scores[eos] = 0.0
                return scores
            if bias:
                ok = bias_ids < scores.shape[-1]
                scores = scores.copy()
                scores[bias_ids[ok]] += bias_vals[ok]
            return scores

        it = llm.create_chat_completion(**kwargs, stream=True,
                                        logits_processor=LogitsProcessorList([watch]))
        try:
            for chunk in it:
                if cancel.is_set():
                    raise Cancelled()
                fr = chunk["choices"][0].get("finish_reason") if chunk.get("choices") else None
                if fr:
                    counts["finish_reason"] = fr
                emit(chunk)
        finally:
            with contextlib.suppress(Exception):
                it.close()
        if cancel.is_set():
            raise Cancelled()
        # Every sampled token was counted; one that ends generation (end-of-sequence,
        # natural or forced for the budget) is not part of the answer.
        last = llm._vx11_last_token
        if last is not None and counts["completion_tokens"] and _is_eog(llm, last):
            counts["completion_tokens"] -= 1
        if counts.pop("forced_stop", False):
            counts["finish_reason"] = "length"
        return counts

    def shutdown(self) -> None:
        if self.llm is not None:
            self._pool.submit(self._close).result()
        self._pool.shutdown(wait=True)
