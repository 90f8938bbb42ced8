"""JSON errors and request-body parsing shared by the gateway's route modules."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..chatapi import error_body

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


def error_for(request: web.Request, status: int, code: str, message: str,
              headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    """:func:`json_error`, or OpenAI's error shape on the OpenAI-compatible ``/v1/`` paths
    (so the official SDK raises the right exception with the right message)."""
    if not request.path.startswith("/v1/"):
        return json_error(status, code, message, headers, **extra)
    param = extra.pop("param", None)
    body = {**error_body(status, message, param=param, code=code), **extra}
    return web.json_response(body, status=status, headers=headers)


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
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ApiError(422, "bad_body", "body must be a JSON object")
    return data


def no_timeout(handler: Handler) -> Handler:
    """Mark a handler (e.g. a stream) that manages its own deadline."""
    handler._vx11_no_timeout = True  # type: ignore[attr-defined]
    return handler
