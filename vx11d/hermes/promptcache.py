"""Saved prompt states, so several conversations each keep their evaluated prefix.

llama-cpp-python's ``LlamaRAMCache`` stores, with every state, a copy of the logits of
the whole batch (``n_batch x n_vocab`` floats: 100 MB for a 49k vocabulary) that its
``capacity_bytes`` does not count, so a "256 MiB" cache could hold gigabytes. Those
logits are never used: after ``load_state`` llama-cpp-python evaluates again at least the
last token before it samples. This cache keeps a one-row stand-in instead (it broadcasts
into the rows ``load_state`` fills) and counts what it really holds.
"""

from __future__ import annotations

from llama_cpp import LlamaRAMCache


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
