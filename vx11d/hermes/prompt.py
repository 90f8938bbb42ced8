"""A validated chat request → what the batch loop needs: prompt tokens, stop strings, the
sampler settings and, for JSON mode, a grammar llama.cpp has compiled.

The prompt is rendered by the very chat handler llama-cpp-python's
``create_chat_completion`` would use (the GGUF's template, or the configured format):
the handler is called with a stand-in for the model that records the completion call
instead of running it, so the tokens and stop strings are exactly the ones the
high-level API would generate from.
"""

from __future__ import annotations

import ctypes
import json
import random
from dataclasses import dataclass, field
from typing import Any

from ..chatapi import ChatError

# llama-cpp-python's create_chat_completion defaults
DEFAULTS = {"temperature": 0.2, "top_p": 0.95, "top_k": 40, "min_p": 0.05,
            "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}
PENALTY_LAST_N = 64  # llama-cpp-python's last_n_tokens_size


@dataclass
class Prepared:
    """One request, ready to join the batch."""

    tokens: list[int]
    stop: list[str]
    stop_check: Any = None  # the chat format's stopping criteria (token ids), or None
    max_tokens: int = 1 << 30
    sampling: dict = field(default_factory=dict)
    grammar: str | None = None  # GBNF text, compiled once here to prove it compiles
    json_mode: bool = False


class _Recorded(Exception):
    def __init__(self, kwargs: dict):
        super().__init__("recorded")
        self.kwargs = kwargs


class _Recorder:
    """What a chat handler touches on ``llama``: tokenize, verbose, create_completion."""

    verbose = False

    def __init__(self, llm: Any) -> None:
        self._llm = llm

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return self._llm.tokenize(text, add_bos=add_bos, special=special)

    def create_completion(self, **kwargs: Any) -> Any:
        raise _Recorded(kwargs)


def chat_handler(llm: Any) -> Any:
    """The handler ``create_chat_completion`` would pick for ``llm``."""
    from llama_cpp import llama_chat_format

    return (llm.chat_handler or llm._chat_handlers.get(llm.chat_format)
            or llama_chat_format.get_chat_completion_handler(llm.chat_format))


def prepare(llm: Any, handler: Any, kwargs: dict) -> Prepared:
    """Render and tokenize the prompt, settle the sampling, compile JSON mode's grammar.

    Raises :class:`ChatError` (400) for a grammar llama.cpp cannot compile.
    """
    kw = dict(kwargs)
    fmt = kw.pop("response_format", None)
    try:
        handler(llama=_Recorder(llm), messages=kw["messages"], stop=kw.get("stop") or [],
                temperature=0.0)
    except _Recorded as r:
        rec = r.kwargs
    else:
        raise RuntimeError("the chat format did not ask for a completion")
    sampling = {k: kw.get(k, v) for k, v in DEFAULTS.items()}
    sampling["seed"] = kw["seed"] if kw.get("seed") is not None else \
        random.getrandbits(32)
    sampling["logit_bias"] = kw.get("logit_bias") or {}
    p = Prepared(tokens=list(rec["prompt"]), stop=list(rec.get("stop") or []),
                 stop_check=rec.get("stopping_criteria"), sampling=sampling)
    if kw.get("max_tokens"):
        p.max_tokens = kw["max_tokens"]
    if fmt is not None and fmt.get("type") != "text":
        p.grammar = grammar_for(fmt)
        p.json_mode = True
        free_sampler(grammar_sampler(llm, p.grammar))  # compiles, or a 400
    return p


def grammar_for(fmt: dict) -> str:
    """The GBNF for a ``response_format`` (json_object, or json_schema's schema)."""
    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if fmt["type"] == "json_object":
        schema = fmt.get("schema")  # llama-cpp-python's extension
        if schema is None:
            return JSON_GBNF
    else:
        schema = fmt["json_schema"].get("schema", {"type": "object"})
    try:
        return json_schema_to_gbnf(json.dumps(schema))
    except (ValueError, KeyError, TypeError, AttributeError, AssertionError, IndexError,
            NotImplementedError, RecursionError) as e:
        raise ChatError(400, f"response_format: the JSON schema cannot be turned into a "
                        f"grammar: {type(e).__name__}: {e}", param="response_format",
                        code="invalid_schema") from e


def grammar_sampler(llm: Any, gbnf: str) -> Any:
    """llama.cpp's grammar sampler for ``gbnf`` (a ``llama_sampler_p``); 400 if it does
    not compile (llama.cpp returns NULL and says why only on stderr)."""
    import llama_cpp

    smpl = llama_cpp.llama_sampler_init_grammar(llm._model.vocab, gbnf.encode(), b"root")
    if not smpl:
        raise ChatError(400, "response_format: llama.cpp cannot compile the grammar made "
                        "from this JSON schema; simplify the schema (see the worker's log "
                        "for the parser's message)", param="response_format",
                        code="invalid_schema")
    return smpl


def free_sampler(smpl: Any) -> None:
    import llama_cpp

    llama_cpp.llama_sampler_free(smpl)


def plain_greedy(p: Prepared) -> dict[int, float] | None:
    """The logit bias when the chain would only add it and take the largest logit
    (temperature 0, neutral penalties, no grammar): the batch loop then picks the token
    itself from the logits row, as llama.cpp's greedy sampler does (first of the
    largest), without copying the whole vocabulary into a candidate list. Else None."""
    s = p.sampling
    if s["temperature"] != 0.0 or p.grammar is not None or (
            s["repeat_penalty"], s["frequency_penalty"], s["presence_penalty"]) != (
            1.0, 0.0, 0.0):
        return None
    return s["logit_bias"]


def build_sampler(llm: Any, p: Prepared) -> Any:
    """The request's sampler chain, in llama-cpp-python's order: logit bias, penalties,
    grammar, then greedy (temperature 0) or top-k/typical/top-p/min-p/temperature/dist."""
    import llama_cpp

    s = p.sampling
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    add = llama_cpp.llama_sampler_chain_add
    n_vocab = llama_cpp.llama_vocab_n_tokens(llm._model.vocab)
    bias = {t: b for t, b in s["logit_bias"].items() if 0 <= t < n_vocab}
    if bias:
        arr = (llama_cpp.llama_logit_bias * len(bias))()
        for i, (t, b) in enumerate(bias.items()):
            arr[i].token, arr[i].bias = t, b
        add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(bias), arr))
    add(chain, llama_cpp.llama_sampler_init_penalties(
        n_vocab, PENALTY_LAST_N, s["repeat_penalty"], s["frequency_penalty"],
        s["presence_penalty"]))
    if p.grammar is not None:
        add(chain, grammar_sampler(llm, p.grammar))
    temp = s["temperature"]
    if temp == 0.0:
        add(chain, llama_cpp.llama_sampler_init_greedy())
    else:
        add(chain, llama_cpp.llama_sampler_init_top_k(s["top_k"]))
        add(chain, llama_cpp.llama_sampler_init_typical(1.0, 1))
        add(chain, llama_cpp.llama_sampler_init_top_p(s["top_p"], 1))
        add(chain, llama_cpp.llama_sampler_init_min_p(s["min_p"], 1))
        add(chain, llama_cpp.llama_sampler_init_temp(temp))
        add(chain, llama_cpp.llama_sampler_init_dist(ctypes.c_uint32(s["seed"]).value))
    return chain
