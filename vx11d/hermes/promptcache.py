"""Saved prompt states, so several conversations each keep their evaluated prefix.

llama-cpp-python's ``LlamaRAMCache`` stores, with every state, a copy of the logits of
the whole batch (``n_batch x n_vocab`` floats: 16-100 MB for a 49k vocabulary) that its
``capacity_bytes`` does not count, so a "256 MiB" cache could hold gigabytes. Those
logits are never used: after a state is loaded, llama-cpp-python evaluates again at
least the last prompt token before it samples. So:

* :class:`PromptCache` counts what it really holds and keeps one logits row;
* :func:`lean_state_io` replaces the model's ``save_state``/``load_state`` with versions
  that skip the logits too (a save copied the whole batch of logits and the state twice:
  10-20 ms after every answer; a load masked the whole logits array: ~60 ms).
"""

from __future__ import annotations

import ctypes
from typing import Any

from llama_cpp import LlamaRAMCache, LlamaState


class PromptCache(LlamaRAMCache):
    """A ``LlamaRAMCache`` bounded by the memory it really holds (LRU)."""

    @property
    def cache_size(self) -> int:
        return sum(s.llama_state_size + s.scores.nbytes + s.input_ids.nbytes
                   for s in self.cache_state.values())

    def __setitem__(self, key, value) -> None:  # type: ignore[no-untyped-def]
        if value.scores.ndim == 2 and value.scores.shape[0] > 1:
            value.scores = value.scores[-1:].copy()
        super().__setitem__(key, value)


def lean_state_io(llm: Any) -> None:
    """Give ``llm`` a ``save_state``/``load_state`` without the logits copies."""
    import llama_cpp

    def save_state() -> LlamaState:
        ctx = llm._ctx.ctx
        size = int(llama_cpp.llama_state_get_size(ctx))
        buf = bytearray(size)
        n = int(llama_cpp.llama_state_get_data(ctx, (ctypes.c_uint8 * size).from_buffer(buf),
                                               size))
        if n > size:
            raise RuntimeError("llama.cpp wrote more state than it announced")
        # an exact-size copy: a buffer shrunk in place leaves holes in the heap that
        # outlive the model (measured: +11 MiB of RSS after the idle unload)
        state = bytes(memoryview(buf)[:n])
        del buf
        return LlamaState(input_ids=llm.input_ids.copy(), scores=llm._scores[-1:].copy(),
                          n_tokens=llm.n_tokens, llama_state=state, llama_state_size=n,
                          seed=llm._seed)

    def load_state(state: LlamaState) -> None:
        llm.input_ids = state.input_ids.copy()
        llm.n_tokens = state.n_tokens
        llm._requires_eval = True
        llm._seed = state.seed
        n = state.llama_state_size
        data = (ctypes.c_uint8 * n).from_buffer_copy(state.llama_state)
        if llama_cpp.llama_state_set_data(llm._ctx.ctx, data, n) != n:
            raise RuntimeError("llama.cpp refused a saved prompt state")

    llm.save_state = save_state
    llm.load_state = load_state
