"""Continuous batching: every active request decoded together, one llama.cpp batch a step.

One llama.cpp context holds ``parallel`` sequences, each with its own KV stream of
``n_ctx / parallel`` cells (llama-server's ``-c``/``-np`` split). A request takes a free
*slot* (a sequence id); the loop, on the engine's one thread:

    admit new requests → build one batch → llama_decode → sample each sequence → emit

    * admit: the free slot whose cached tokens share the longest prefix with the prompt
      (its KV is kept, the rest removed: the prompt cache); a saved state from RAM when
      it shares more (see :mod:`promptcache`);
    * batch: first the next chunk of every prompt still being read, each in a decode
      of its own (up to ``n_batch`` prompt tokens a step); then the next token of every
      generating sequence (logits on) in one decode, with the sequences that just read
      their prompt, and as a row of it the last prompt token of a prompt that has only
      that one left (a prompt found in the cache but for its end): a new request joins
      between two steps without stopping the others, and requests that arrive together
      generate together;
    * sample: each sequence with its own sampler chain at its row of the logits;
    * a sequence ends at end-of-generation, a stop string, ``max_tokens``, the context's
      end or its cancel flag; its slot keeps its KV for the next prompt that shares it.

Identical answers alone and among others (temperature 0). llama.cpp's CPU attention
picks its kernel by the shape of each decode (a tiled one for >= 64 query rows, a per-row
one below, and for a single row over >= 512 KV cells one that splits the cells across
threads) and sums over a sequence's cells in cell order; each choice rounds differently,
and now and then that changes a token. So: a KV stream per sequence (its cells start at
0 and stay in position order, whatever the others do); a prompt is read in decodes of its
own, chunked as it is alone (but a lone last token is a row of the generation step,
alone or not, so it gets the per-row kernel as a short last chunk does); a generation
step holds one row per sequence id from the lowest generating one to the highest, an
idle slot in between getting a pad token that is removed after the step, and a lone
sequence past 256 tokens getting one beside it (at least two rows: no split kernel).
That keeps every generating row on the per-row kernel alone and together, and the rows
in one ubatch (llama.cpp splits a batch of separate streams at every gap in the ids).
The split and tiled kernels exist only for an f16 KV cache: with a quantized one (q8_0,
the default with flash attention) every row takes the per-row kernel whatever the
decode's shape, and a lone sequence goes without the pad (a two-row decode takes ~1.5x a
one-row one on 2 cores). Tested in tests/integration/test_hermes_batching.py (both cache
types); the bench reports ``concurrent_answers_identical``.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .prompt import Prepared, build_sampler, plain_greedy
from .textout import TextOut

log = logging.getLogger("vx11.hermes")


SPLIT_WINDOW = 512  # llama.cpp CPU flash attention: one query row over >= 512 cells splits
TILE_ROWS = 64  # ... and >= 64 query rows take its tiled kernel


class Cancelled(Exception):
    """Generation stopped because its request was cancelled or timed out."""


@dataclass
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV this sequence holds
    exact: int = 0  # the first ones, read as a prompt is read fresh (reusable)
    busy: bool = False
    last_used: float = 0.0


@dataclass
class Seq:
    """One request in the batch."""

    prep: Prepared
    cancel: threading.Event
    emit: Callable[[str], None]
    done: Callable[[Any], None]  # a result dict or an exception
    gone: Callable[[], bool] | None = None  # polled before each step: True stops it too
    slot: Slot | None = None
    sampler: Any = None
    greedy: Any = None  # (token ids, biases, id set) when the loop picks the largest logit
    stop_memo: dict[int, bool] = field(default_factory=dict)  # stop_check's answers
    pending: list[int] = field(default_factory=list)  # prompt tokens not yet decoded
    next_tok: int | None = None
    idx: int = -1  # its logits row in this step's batch, -1: none
    n_gen: int = 0
    out: TextOut | None = None
    finish: str | None = None
    t0: float = 0.0

    def stopped(self) -> bool:
        return self.cancel.is_set() or (self.gone is not None and self.gone())


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Batcher:
    """The batch loop over one context; :meth:`submit` from any thread, :meth:`run` on the
    engine's thread (started by the engine when work arrives)."""

    def __init__(self, llm: Any, ctx: Any, parallel: int, n_batch: int, metrics: dict,
                 cache: Any = None, kernel_by_shape: bool = True) -> None:
        import llama_cpp
        import numpy as np  # with the model: the idle worker stays small

        self._np = np
        self.L = llama_cpp
        self.llm = llm
        self.ctx = ctx  # a llama_context_p
        self.mem = llama_cpp.llama_get_memory(ctx)
        self.vocab = llm._model.vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self._row = ctypes.c_float * self.n_vocab
        self._n_generated = 0  # this step's, counted once a step
        self.n_ctx = int(llama_cpp.llama_n_ctx(ctx))
        self.n_ctx_seq = int(llama_cpp.llama_n_ctx_seq(ctx))
        self.n_batch = n_batch
        self.m = metrics
        self.cache = cache
        self.kernel_by_shape = kernel_by_shape  # f16 KV: see _split_kernel
        self.slots = [Slot(i) for i in range(parallel)]
        self.active: list[Seq] = []
        self._new: list[Seq] = []
        self._lock = threading.Lock()
        self.running = False
        self.after_step: Callable[[], None] | None = None  # e.g. hand the step's text over
        self._piece = ctypes.create_string_buffer(256)
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)
        b = self.batch
        self._tok = np.ctypeslib.as_array(b.token, shape=(n_batch,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(n_batch,))
        self._nseq = np.ctypeslib.as_array(b.n_seq_id, shape=(n_batch,))
        self._logits = np.ctypeslib.as_array(
            ctypes.cast(b.logits, ctypes.POINTER(ctypes.c_int8)), shape=(n_batch,))
        self._seq = [b.seq_id[i] for i in range(n_batch)]
        self._nseq[:] = 1

    def close(self) -> None:
        if self.batch is not None:
            self.L.llama_batch_free(self.batch)
            self.batch = None
        for s in self.active:
            self._free_sampler(s)

    # -- from any thread ---------------------------------------------------------------
    def submit(self, seq: Seq) -> bool:
        """Queue ``seq``; True when the caller must start :meth:`run` on the engine thread."""
        with self._lock:
            self._new.append(seq)
            if self.running:
                return False
            self.running = True
            return True

    def kv_cells_used(self) -> int:
        return sum(len(s.cached) for s in self.slots)

    # -- on the engine thread ----------------------------------------------------------
    def run(self) -> None:
        """Decode until no request is left (then return; :meth:`submit` restarts it)."""
        try:
            while True:
                with self._lock:
                    new, self._new = self._new, []
                    if not new and not self.active:
                        self.running = False
                        return
                for seq in new:
                    self._admit(seq)
                if self.active:
                    self._step()
                if self.after_step is not None:
                    self.after_step()
        except BaseException as e:  # never leave a request hanging
            log.exception("batch loop failed")
            with self._lock:
                new, self._new = self._new, []
                self.running = False
            for s in [*self.active, *new]:
                self._end(s, e)
            if self.after_step is not None:
                self.after_step()
            raise

    def _admit(self, seq: Seq) -> None:
        if seq.stopped():
            seq.done(Cancelled())
            return
        toks = seq.prep.tokens
        free = [s for s in self.slots if not s.busy]
        if not free:  # the worker admits at most `parallel`: cannot happen
            seq.done(RuntimeError("no free sequence slot"))
            return
        slot = max(free, key=lambda s: (common_prefix(s.cached[:s.exact], toks),
                                        -s.last_used))
        n = common_prefix(slot.cached[:slot.exact], toks)
        if self.cache is not None:
            n = self._from_cache(slot, toks, n)
        n = self._resume_at(min(n, len(toks) - 1), len(toks))
        if n < len(slot.cached) and not self.L.llama_memory_seq_rm(self.mem, slot.seq_id,
                                                                  n, -1):
            self.L.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
            n = 0
        del slot.cached[n:]
        slot.exact = n
        slot.busy = True
        seq.slot = slot
        seq.pending = toks[n:]
        seq.sampler = build_sampler(self.llm, seq.prep)
        bias = plain_greedy(seq.prep)
        if bias is not None:
            np = self._np
            ids = [t for t in bias if 0 <= t < self.n_vocab]
            seq.greedy = (np.array(ids, dtype=np.intp),
                          np.array([bias[t] for t in ids], dtype=np.float32), set(ids))
        seq.out = TextOut(seq.prep.stop)
        seq.t0 = time.monotonic()
        self.m["prompt_cached_tokens"].inc(n)
        self.active.append(seq)

    def _resume_at(self, n: int, total: int) -> int:
        """Where to start reading a prompt of ``total`` tokens whose first ``n`` are
        cached, so that every row is read as in a fresh read (chunks of ``n_batch`` from
        position 0; a chunk of >= 64 rows takes the tiled attention kernel, a smaller
        one the per-row kernel): a resumed chunk smaller than the fresh one must still
        be tiled when the fresh one was, so it starts up to 64 rows earlier."""
        b = self.n_batch
        start = n - n % b
        end = min(total, start + b)
        if end - start >= TILE_ROWS and end - n < TILE_ROWS:
            return max(start, end - TILE_ROWS)
        return n

    def _from_cache(self, slot: Slot, toks: list[int], n: int) -> int:
        """Swap a saved state in when it shares more of the prompt than the slot does;
        save the slot's own state first if the new prompt would cut much of it away."""
        key, m = self.cache.best(toks)
        own = tuple(slot.cached[:slot.exact])
        if ((key is not None and m > n + 16) or len(own) - n >= 64) and len(own) >= 64 \
                and own not in self.cache:
            state = self._save(slot)
            if state is not None:
                self.cache.put(own, state)
        if key is None or m <= n + 16:
            return n
        data = self.cache.get(key)
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if self.L.llama_state_seq_set_data(self.ctx, buf, len(data), slot.seq_id) == 0:
            self.L.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
            slot.cached, slot.exact = [], 0
            return 0
        # the state may hold the answer after its prompt: only the prompt is kept
        self.L.llama_memory_seq_rm(self.mem, slot.seq_id, len(key), -1)
        slot.cached, slot.exact = list(key), len(key)
        return m

    def _save(self, slot: Slot) -> bytes | None:
        """The slot's sequence state, or None when it would not fit the cache at all
        (a 7B model's 2,000-token state is ~1 GiB: never copied only to be dropped)."""
        size = int(self.L.llama_state_seq_get_size(self.ctx, slot.seq_id))
        if size > self.cache.capacity:
            return None
        buf = bytearray(size)
        n = int(self.L.llama_state_seq_get_data(
            self.ctx, (ctypes.c_uint8 * size).from_buffer(buf), size, slot.seq_id))
        return bytes(memoryview(buf)[:n])

    def _step(self) -> None:
        """One step: the next prompt chunk of every sequence still reading its prompt
        (each in a decode of its own, up to ``n_batch`` prompt tokens in all: see the
        module's note on identical answers), then one decode of every generating
        sequence's next token, those that just read their prompt included: requests
        that arrive together generate together from their first step on (reading one
        prompt per step made them join one step apart, and each of those steps was a
        decode with fewer rows, then as many again with fewer rows at the end)."""
        for s in list(self.active):
            if s.stopped():
                self._end(s, Cancelled())
        budget = self.n_batch
        for s in [s for s in self.active if s.pending]:
            if len(s.pending) == 1:  # its prompt's last token: a row of the generation
                s.next_tok = s.pending[0]  # decode (the per-row kernel, as alone)
                continue
            base = len(s.slot.cached)
            take = min(len(s.pending), self.n_batch - base % self.n_batch)  # fresh chunks
            if take > budget and budget < self.n_batch:
                break  # the next step reads it
            budget -= take
            if not self._read(s, base, take):
                break
        gen = sorted((s for s in self.active if s.next_tok is not None),
                     key=lambda s: s.slot.seq_id)
        if gen:
            n, pads = self._gen_rows(gen)
            tails = sum(1 for s in gen if s.pending)
            ok = self._decode(n, tails, len(gen))
            for slot in pads:  # a pad's cell goes, the slot's cache stays
                self.L.llama_memory_seq_rm(self.mem, slot.seq_id, len(slot.cached), -1)
            if ok:
                for s in gen:
                    s.slot.cached.append(s.next_tok)
                    s.next_tok = None
                    if s.pending:  # the prompt is read: its KV is reusable
                        s.pending.clear()
                        s.slot.exact = len(s.slot.cached)
                for s in gen:
                    self._token(s, self._sample(s, s.idx))
        if self._n_generated:
            self.m["generated_tokens"].inc(self._n_generated)
            self._n_generated = 0
        self.m["kv_used"].set(self.kv_cells_used())

    def _read(self, s: Seq, base: int, take: int) -> bool:
        """Decode the next ``take`` prompt tokens of ``s`` (at position ``base``); after
        the last, sample its first token. False when the KV cache was full."""
        for i in range(take):
            self._add(i, s.pending[i], base + i, s.slot.seq_id, False)
        last = take == len(s.pending)
        self._logits[take - 1] = last
        if not self._decode(take, take, 1):
            return False
        s.slot.cached.extend(s.pending[:take])
        s.slot.exact = len(s.slot.cached)
        del s.pending[:take]
        if last:
            self._token(s, self._sample(s, take - 1))
        return True

    def _gen_rows(self, gen: list[Seq]) -> tuple[int, list[Slot]]:
        """Fill the batch with one row per sequence id from the lowest generating one to
        the highest (at least two): the generating sequences' next tokens, and a pad
        token for an idle slot in between, so that llama.cpp decodes them all in one
        ubatch (it splits a batch of separate KV streams at every gap in the ids) and a
        lone sequence gets the kernel of a batched step."""
        by_id = {s.slot.seq_id: s for s in gen}
        lo, hi = gen[0].slot.seq_id, gen[-1].slot.seq_id
        if lo == hi and len(self.slots) > 1 and self._split_kernel(gen[0]):
            lo, hi = (lo, lo + 1) if lo + 1 < len(self.slots) else (lo - 1, lo)
        pads = []
        for i, sid in enumerate(range(lo, hi + 1)):
            slot = self.slots[sid]
            s = by_id.get(sid)
            if s is not None:
                self._add(i, s.next_tok, len(slot.cached), sid, True)
                s.idx = i
                continue
            if len(slot.cached) >= self.n_ctx_seq - 1:  # room for the pad's cell
                self.L.llama_memory_seq_rm(self.mem, sid, len(slot.cached) - 1, -1)
                slot.cached.pop()
                slot.exact = min(slot.exact, len(slot.cached))
            self._add(i, gen[0].next_tok, len(slot.cached), sid, False)
            pads.append(slot)
        return hi - lo + 1, pads

    def _split_kernel(self, s: Seq) -> bool:
        """Would a lone row of ``s`` get the split kernel? llama.cpp pads a stream's
        window to a multiple of 256 cells and splits a single row's attention from 512
        cells on; below that the lone row already gets the per-row kernel. Only an f16
        KV cache has the split (and the tiled) kernel: with a quantized one every row of
        every decode takes the per-row kernel, and the pad would only cost time (a
        decode of two rows takes ~1.5x one of a single row here)."""
        return (self.kernel_by_shape and len(s.slot.cached) + 1 > SPLIT_WINDOW // 2
                and self.n_ctx_seq >= SPLIT_WINDOW)

    def _decode(self, n: int, n_prompt: int, n_seqs: int) -> bool:
        """llama_decode of the first ``n`` batch entries (``n_prompt`` of them prompt
        tokens: all of a prompt chunk, or the last prompt tokens in a generation step,
        one row per sequence of ``n_seqs``); False when the KV cache was full (room was
        made; the step is tried again)."""
        self.batch.n_tokens = n
        t = time.perf_counter()
        rc = self.L.llama_decode(self.ctx, self.batch)
        if rc == 1:
            self._make_room()
            return False
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")
        dt = time.perf_counter() - t
        m = self.m
        rows = n if n_prompt == n else n_seqs  # real rows (a generation step's pads aside)
        if n_prompt:
            m["prompt_tokens"].inc(n_prompt)
            m["prompt_seconds"].inc(dt * n_prompt / rows)
        if n_prompt < rows:
            m["generated_seconds"].inc(dt * (rows - n_prompt) / rows)
        m["batch_size"].observe(n_seqs)
        return True

    def _add(self, i: int, tok: int, pos: int, seq_id: int, logits: bool) -> None:
        self._tok[i] = tok
        self._pos[i] = pos
        self._seq[i][0] = seq_id
        self._logits[i] = logits

    def _sample(self, s: Seq, idx: int) -> int:
        """The next token of ``s`` from logits row ``idx``: its sampler chain, or for
        plain greedy the first largest logit after the bias (float32 adds, as the
        logit-bias sampler does; the row is copied only when the bias touches the
        unbiased row's largest)."""
        if s.greedy is None:
            return self.L.llama_sampler_sample(s.sampler, self.ctx, idx)
        ptr = self.L.llama_get_logits_ith(self.ctx, idx)
        row = self._np.frombuffer(self._row.from_address(ctypes.addressof(ptr.contents)),
                                  dtype=self._np.float32)
        best = int(row.argmax())
        ids, bias, biased = s.greedy
        if not biased:
            return best
        if best in biased:
            row = row.copy()
            row[ids] += bias
            return int(row.argmax())
        top = row[best]
        for t, b in zip(ids.tolist(), bias, strict=True):
            v = row[t] + b  # float32
            if v > top or (v == top and t < best):
                best, top = t, v
        return best

    def _is_stop(self, s: Seq, tok: int) -> bool:
        """End of generation, or a token the chat format stops on (answers memoized
        per request: the format's check only looks at the last token)."""
        hit = s.stop_memo.get(tok)
        if hit is None:
            check = s.prep.stop_check
            np = self._np
            hit = bool(self.L.llama_vocab_is_eog(self.vocab, tok)) or (
                check is not None and bool(check(np.array([tok], dtype=np.intc), None)))
            s.stop_memo[tok] = hit
        return hit

    def _token(self, s: Seq, tok: int) -> None:
        s.n_gen += 1
        if self._is_stop(s, tok):
            s.n_gen -= 1  # the end-of-generation token is not part of the answer
            s.finish = "stop"
        else:
            self._n_generated += 1
            k = self.L.llama_token_to_piece(self.vocab, tok, self._piece, 256, 0, False)
            text = s.out.push(self._piece.raw[:k]) if k > 0 else ""
            if text:
                s.emit(text)
            if s.out.stopped:
                s.finish = "stop"
            elif s.n_gen >= s.prep.max_tokens or len(s.slot.cached) + 1 >= self.n_ctx_seq - 1:
                s.finish = "length"
            else:
                s.next_tok = tok
                return
        self._end(s, None)

    def _end(self, s: Seq, err: BaseException | None) -> None:
        if s in self.active:
            self.active.remove(s)
        if s.slot is not None:
            s.slot.busy = False
            s.slot.last_used = time.monotonic()
        self._free_sampler(s)
        if err is not None:
            s.done(err)
            return
        tail = s.out.finish()
        if tail:
            s.emit(tail)
        s.done({"prompt_tokens": len(s.prep.tokens), "completion_tokens": s.n_gen,
                "finish_reason": s.finish or "stop"})

    def _free_sampler(self, s: Seq) -> None:
        if s.sampler is not None:
            self.L.llama_sampler_free(s.sampler)
            s.sampler = None

    def _make_room(self) -> None:
        """The cache is full: drop idle slots' KV; if none, end the longest sequence."""
        idle = [s for s in self.slots if not s.busy and s.cached]
        if idle:
            for slot in idle:
                self.L.llama_memory_seq_rm(self.mem, slot.seq_id, -1, -1)
                slot.cached, slot.exact = [], 0
            return
        victim = max(self.active, key=lambda s: len(s.slot.cached))
        self.L.llama_memory_seq_rm(self.mem, victim.slot.seq_id, -1, -1)
        victim.slot.cached, victim.slot.exact = [], 0
        victim.finish = "length"
        self._end(victim, None)
