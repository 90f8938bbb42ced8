"""The OpenAI chat-completions contract that the gateway and Hermes both speak.

One parser for a ``POST /v1/chat/completions`` body (:func:`parse_chat`) and one error
shape (:func:`error_body`), so a client sees the same answer for the same mistake
wherever it is caught. ``response_format`` (JSON mode: ``json_object`` or ``json_schema``)
is checked for shape here; whether llama.cpp can compile the schema is Hermes's to say
(a 400 too). Parameters vx11d does not implement (``n`` > 1, ``tools``,
``logprobs``, ...) and parameters it does not know are refused with a 400 that names the
parameter, as OpenAI does — never silently ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

FLOATS = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "presence_penalty": (-2.0, 2.0),
          "frequency_penalty": (-2.0, 2.0),
          # llama.cpp extensions, as llama_cpp.server accepts them
          "min_p": (0.0, 1.0), "repeat_penalty": (0.0, 10.0)}
INTS = {"seed": (-(2**63), 2**64 - 1), "top_k": (0, 1 << 20)}
# accepted and without effect on a single local model: per-request metadata
IGNORED = ("user", "store", "metadata", "service_tier")
# OpenAI parameters we do not implement: refused unless given their no-op value
UNSUPPORTED = {
    "n": lambda v: v not in (None, 1),
    "tools": lambda v: bool(v),
    "tool_choice": lambda v: v not in (None, "none"),
    "parallel_tool_calls": lambda v: v is not None,
    "functions": lambda v: bool(v),
    "function_call": lambda v: v not in (None, "none"),
    "logprobs": lambda v: bool(v),
    "top_logprobs": lambda v: v is not None,
    "audio": lambda v: v is not None,
    "modalities": lambda v: v not in (None, ["text"]),
    "prediction": lambda v: v is not None,
    "reasoning_effort": lambda v: v is not None,
    "web_search_options": lambda v: v is not None,
}
KNOWN = {"messages", "model", "stream", "stream_options", "max_tokens",
         "max_completion_tokens", "stop", "logit_bias", "response_format", *FLOATS, *INTS, *IGNORED,
         *UNSUPPORTED}
ROLES = ("system", "developer", "user", "assistant")
MAX_STOP = 4
MAX_SCHEMA_BYTES = 64 * 1024
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "invalid_request_error",
               413: "invalid_request_error", 415: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_error"}


class ChatError(Exception):
    """A request the chat API refuses; rendered with :func:`error_body`."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param
        self.code = code
        self.headers = headers or {}


def error_body(status: int, message: str, *, param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error object: what the official SDK reads into its exception."""
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


def _bad(message: str, param: str, code: str = "invalid_value") -> ChatError:
    return ChatError(400, message, param=param, code=code)


@dataclass
class ChatRequest:
    """A validated chat request: llama-cpp-python keyword arguments and the OpenAI extras."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    model: str | None = None
    stream: bool = False
    include_usage: bool = False


def _number(body: dict, key: str, lo: float, hi: float, kind: type) -> Any:
    v = body[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or \
            (kind is int and not isinstance(v, int)):
        raise _bad(f"{key} must be {'an integer' if kind is int else 'a number'}", key,
                   "invalid_type")
    if not lo <= v <= hi:
        raise _bad(f"{key} must be between {lo:g} and {hi:g}; got {v}", key)
    return kind(v)


def _response_format(v: Any) -> dict | None:
    """OpenAI's ``response_format``: None for plain text, else ``{"type": "json_object"}``
    or ``{"type": "json_schema", "json_schema": {"name", "schema"}}`` (JSON mode)."""
    param = "response_format"
    if v is None:
        return None
    if not isinstance(v, dict) or v.get("type") not in ("text", "json_object",
                                                          "json_schema"):
        raise _bad("response_format must be an object whose type is text, json_object "
                   "or json_schema", param)
    kind = v["type"]
    allowed = {"type", "json_schema"} if kind == "json_schema" else {"type"}
    extra = set(v) - allowed
    if extra:
        raise _bad(f"response_format.{sorted(extra)[0]} is not allowed with type {kind}",
                   param)
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    js = v.get("json_schema")
    if not isinstance(js, dict) or not isinstance(js.get("name"), str) or not js["name"]:
        raise _bad("response_format.json_schema must be an object with a name (a string) "
                   "and a schema", param)
    extra = set(js) - {"name", "description", "schema", "strict"}
    if extra:
        raise _bad(f"response_format.json_schema.{sorted(extra)[0]} is not supported", param)
    schema = js.get("schema", {"type": "object"})
    if not isinstance(schema, dict):
        raise _bad("response_format.json_schema.schema must be a JSON Schema object", param)
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise _bad(f"response_format.json_schema.schema is larger than "
                   f"{MAX_SCHEMA_BYTES // 1024} KiB", param)
    return {"type": "json_schema", "json_schema": {"name": js["name"], "schema": schema}}


def parse_chat(body: Any, max_tokens_cap: int | None = None) -> ChatRequest:
    """Validate an OpenAI chat body; :class:`ChatError` (400, naming the param) if wrong."""
    if not isinstance(body, dict):
        raise ChatError(400, "the body must be a JSON object", code="invalid_body")
    for key in body:
        if key not in KNOWN:
            raise _bad(f"unrecognized request argument: {key}", key, "unknown_parameter")
    for key, refused in UNSUPPORTED.items():
        if key in body and refused(body[key]):
            raise _bad(f"{key} is not supported by this server", key, "unsupported_parameter")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages must be a non-empty list", "messages")
    clean = []
    for i, m in enumerate(msgs):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise _bad(f"{where} must be an object", where)
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise _bad(f"{where}.role must be one of {', '.join(ROLES)}", f"{where}.role")
        if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text"
                       and isinstance(p.get("text"), str) for p in content):
                raise _bad(f"{where}.content: only text parts are supported",
                           f"{where}.content")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise _bad(f"{where}.content must be a string", f"{where}.content")
        extra = set(m) - {"role", "content", "name"}
        if extra:
            key = sorted(extra)[0]
            raise _bad(f"{where}.{key} is not supported", f"{where}.{key}",
                       "unsupported_parameter")
        clean.append({"role": "system" if role == "developer" else role, "content": content})
    req = ChatRequest(kwargs={"messages": clean})
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise _bad("model must be a string", "model", "invalid_type")
    req.model = model or None
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise _bad("stream must be a boolean", "stream", "invalid_type")
    req.stream = bool(stream)
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict) or set(opts) - {"include_usage"} \
                or not isinstance(opts.get("include_usage", False), bool):
            raise _bad("stream_options may only hold include_usage (a boolean)",
                       "stream_options")
        if not req.stream:
            raise _bad("stream_options is only allowed with stream: true", "stream_options")
        req.include_usage = opts.get("include_usage", False)
    for key in ("max_tokens", "max_completion_tokens"):
        if body.get(key) is not None:
            req.kwargs["max_tokens"] = _number(body, key, 1, 1 << 31, int)
    if max_tokens_cap is not None:
        req.kwargs["max_tokens"] = min(req.kwargs.get("max_tokens", max_tokens_cap),
                                       max_tokens_cap)
    for key, (lo, hi) in FLOATS.items():
        if body.get(key) is not None:
            req.kwargs[key] = _number(body, key, lo, hi, float)
    for key, (lo, hi) in INTS.items():
        if body.get(key) is not None:
            req.kwargs[key] = _number(body, key, lo, hi, int)
    if "seed" in req.kwargs:
        req.kwargs["seed"] &= 0xFFFFFFFF  # llama.cpp seeds are 32-bit
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) \
                or len(stop) > MAX_STOP:
            raise _bad(f"stop must be a non-empty string or a list of up to {MAX_STOP}",
                       "stop")
        req.kwargs["stop"] = stop
    fmt = _response_format(body.get("response_format"))
    if fmt is not None:
        req.kwargs["response_format"] = fmt
    bias = body.get("logit_bias")
    if bias is not None:
        if not isinstance(bias, dict) or len(bias) > 4096:
            raise _bad("logit_bias must be an object of at most 4096 entries", "logit_bias")
        try:
            req.kwargs["logit_bias"] = {int(k): float(v) for k, v in bias.items()
                                        if -100 <= float(v) <= 100}
        except (TypeError, ValueError) as e:
            raise _bad("logit_bias maps token ids to numbers", "logit_bias") from e
        if len(req.kwargs["logit_bias"]) != len(bias):
            raise _bad("logit_bias values must be between -100 and 100", "logit_bias")
    return req
