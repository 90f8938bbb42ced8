"""Saved sequence states in RAM, so more conversations keep their evaluated prefix than
there are slots.

Each slot of the batch keeps the KV of its last prompt (see :mod:`batcher`). When a new
prompt would cut a long cached prefix away, the batcher saves that sequence's state here
first (``llama_state_seq_get_data``: its KV cells only, no logits), and when a saved
state shares more of a new prompt than any free slot does, it is put back into the slot
(``llama_state_seq_set_data``). Bounded by the bytes it really holds, least recently used
out first.
"""

from __future__ import annotations

from collections import OrderedDict


class SeqStateCache:
    """token tuple → saved sequence state (bytes), LRU within ``capacity_bytes``."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.states: OrderedDict[tuple[int, ...], bytes] = OrderedDict()
        self.size = 0

    def __contains__(self, key: tuple[int, ...]) -> bool:
        return key in self.states

    def __len__(self) -> int:
        return len(self.states)

    def best(self, tokens: list[int]) -> tuple[tuple[int, ...] | None, int]:
        """The saved state sharing the longest prefix with ``tokens``, and that length."""
        best, n_best = None, 0
        for key in self.states:
            n = min(len(key), len(tokens))
            i = 0
            while i < n and key[i] == tokens[i]:
                i += 1
            if i > n_best:
                best, n_best = key, i
        return best, n_best

    def put(self, key: tuple[int, ...], state: bytes) -> None:
        if len(state) > self.capacity:
            return
        old = self.states.pop(key, None)
        if old is not None:
            self.size -= len(old)
        self.states[key] = state
        self.size += len(state)
        while self.size > self.capacity:
            _, dropped = self.states.popitem(last=False)
            self.size -= len(dropped)

    def get(self, key: tuple[int, ...]) -> bytes:
        self.states.move_to_end(key)
        return self.states[key]

    def clear(self) -> None:
        self.states.clear()
        self.size = 0
