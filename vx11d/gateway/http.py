"""JSON errors and request-body parsing shared by the gateway's route modules.

Every JSON body the gateway reads goes through :func:`parse_json`: a body that is not a
sane document (nested deeper than :data:`MAX_DEPTH`, ``NaN``/``Infinity`` or a number
that overflows to it, a key given twice, a lone UTF-16 surrogate, an integer too long
to convert) is a 400 ``bad_json`` naming the problem, never a 500.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error a handler returns to the client as ``{"error": code, "message": ...}``."""

    def __init__(self, status: int, code: str, message: str, **extra: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.extra = status, code, message, extra
        self.headers: dict[str, str] = {}


def json_error(status: int, code: str, message: str, headers: dict[str, str] | None = None,
               **extra: Any) -> web.Response:
    """A JSON error response."""
    body = {"error": code, "message": message, **extra}
    return web.json_response(body, status=status, headers=headers)


MAX_DEPTH = 64  # arrays and objects nested in each other


class _Refused(ValueError):
    """A JSON document that parses but is not one the gateway accepts."""


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _Refused(f"key {k[:64]!r} appears twice in one object")
        out[k] = v
    return out


def _check_tree(data: Any) -> None:
    """Depth, finite numbers and well-formed strings, without recursion."""
    stack = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError as e:
                raise _Refused("a string holds a lone UTF-16 surrogate "
                               f"(\\u{ord(node[e.start]):04x})") from e
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise _Refused("a number is too large (not finite)")
        elif isinstance(node, list | dict):
            if depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels")
            if isinstance(node, dict):
                stack.extend((k, depth) for k in node)
                stack.extend((v, depth + 1) for v in node.values())
            else:
                stack.extend((v, depth + 1) for v in node)


def parse_json(raw: bytes) -> Any:
    """A request body as a sane JSON document; ApiError 400 ``bad_json`` otherwise."""
    try:
        data = json.loads(raw, parse_constant=_no_constant,
                          object_pairs_hook=_no_duplicates)
        _check_tree(data)
    except RecursionError as e:
        raise ApiError(400, "bad_json", "body is not a sane JSON document: nested deeper "
                       f"than {MAX_DEPTH} levels") from e
    except _Refused as e:
        raise ApiError(400, "bad_json", f"body is not a sane JSON document: {e}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {e}") from e
    except ValueError as e:  # e.g. an integer longer than sys.get_int_max_str_digits()
        raise ApiError(400, "bad_json", f"body is not a sane JSON document: {e}") from e
    return data


async def read_json(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object: 415/400/413 as ApiError when it is not one."""
    ctype = request.content_type
    if ctype not in ("application/json", "") and not ctype.endswith("+json"):
        raise ApiError(415, "unsupported_media_type", f"expected application/json, got {ctype}")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise ApiError(413, "too_large", "request body larger than "
                       f"{request.app._client_max_size} bytes") from e
    if not raw:
        raise ApiError(400, "empty_body", "a JSON object body is required")
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise ApiError(422, "bad_body", "body must be a JSON object")
    return data


def no_timeout(handler: Handler) -> Handler:
    """Mark a handler (e.g. a stream) that manages its own deadline."""
    handler._vx11_no_timeout = True  # type: ignore[attr-defined]
    return handler


class BadRequestLog(logging.Filter):
    """On aiohttp's ``aiohttp.server`` logger: a request that is not valid HTTP (a NUL in
    a header, a broken request line) is the client's fault, answered 400 by aiohttp; it
    becomes one warning line instead of an ERROR with a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import BadHttpMessage

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BadHttpMessage):
            reason = str(exc.message).strip().splitlines()[0] if exc.message else "malformed"
            record.msg, record.args = "bad HTTP request (answered 400): %s", (reason[:200],)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
