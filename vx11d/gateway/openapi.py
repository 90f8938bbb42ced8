"""Route module: the OpenAPI 3.1 document at ``GET /openapi.json`` (scope ``read``).

The document is built here and kept in the repository as ``docs/openapi.json``
(``python -m vx11d.gateway.openapi > docs/openapi.json``); a test checks that the
served document equals the file and that every registered route is documented.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from .. import __version__
from ..hijas import HijaStatus

ERR = {"$ref": "#/components/schemas/Error"}
OAI_ERR = {"$ref": "#/components/schemas/OpenAIError"}


def _resp(desc: str, schema: dict | None = None) -> dict[str, Any]:
    r: dict[str, Any] = {"description": desc}
    if schema is not None:
        r["content"] = {"application/json": {"schema": schema}}
    return r


def _errors(*codes: int, schema: dict | None = None) -> dict[str, Any]:
    text = {400: "malformed request", 401: "missing or invalid credential",
            403: "the credential lacks this operation's scope (x-vx11-scope)",
            404: "not found",
            409: "conflict with the current state", 413: "body too large",
            415: "not JSON", 422: "invalid field value", 429: "too many failed token "
            "attempts", 502: "upstream failed", 503: "unavailable", 504: "deadline passed"}
    return {str(c): _resp(text[c], schema or ERR) for c in (401, 403, 429, *codes)}


def _body(schema: dict) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


# The scope each operation needs (a credential with ``admin`` may do everything). The
# document carries it as ``x-vx11-scope``; the gateway enforces what the document says.
SCOPE_OF = {
    ("get", "/openapi.json"): "read",
    ("get", "/vx11/hijas"): "read",
    ("get", "/vx11/hijas/{id}"): "read",
    ("get", "/vx11/policy"): "read",
    ("get", "/vx11/hermes/metrics"): "read",
    ("post", "/vx11/route"): "chat",
    ("post", "/v1/chat/completions"): "chat",
    ("get", "/v1/models"): "chat",
    ("post", "/vx11/spawn"): "operate",
    ("delete", "/vx11/hijas/{id}"): "operate",
    ("post", "/vx11/policy"): "operate",
}
STATUSES = [s.value for s in HijaStatus]  # the hija statuses, in lifecycle order
HIJA = {"$ref": "#/components/schemas/Hija"}
HEALTH = {"type": "object", "required": ["status"], "properties": {
    "status": {"type": "string", "enum": ["ok", "degraded"]},
    "cause": {"type": "string", "description": "why degraded: read_only, disk_full, "
              "db_missing, db_replaced, locked, corrupt, io_error, madre_failed"},
    "component": {"type": "string"}, "db": {"type": "object"},
    "checked": {"type": "string", "format": "date-time",
                "description": "when the view was last refreshed (see Times)"},
    "daemons": {}, "hermes": {}}}
TIMES = ("Times: every time in the vx11 API (/vx11/*, /health) is an ISO 8601 UTC string "
         "to the millisecond, 2026-12-07T06:13:32.250Z, in a field named for the event "
         "(created, expires, ended). The epoch-seconds fields named X_at (created_at, "
         "expires_at, ...) keep their meaning for existing clients and are deprecated. "
         "The OpenAI-compatible /v1/* endpoints follow OpenAI's format (created in epoch "
         "seconds).")


def _time(what: str, nullable: bool = True) -> dict[str, Any]:
    """A time field and its deprecated epoch twin: ``{"X": ..., "X_at": ...}``."""
    kind = ["string", "null"] if nullable else "string"
    num = ["number", "null"] if nullable else "number"
    return {what: {"type": kind, "format": "date-time", "description": "ISO 8601 UTC"},
            f"{what}_at": {"type": num, "deprecated": True,
                           "description": f"{what}, in epoch seconds: use {what}"}}


WINDOW = {"type": "object", "properties": {
    "id": {"type": "integer"}, "component": {"type": "string"},
    **_time("created", False), **_time("expires", False), **_time("ended")}}
ID_PARAM = {"name": "id", "in": "path", "required": True,
            "schema": {"type": "string", "pattern": "^[a-z0-9]{10}$"}}


def document() -> dict[str, Any]:
    """The OpenAPI document of every gateway route."""
    open_api: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "vx11d tentaculo_link", "version": __version__,
                 "description": "The single credential-protected entrypoint. Every path "
                 "but GET /health needs a credential in X-VX11-Token or Authorization: "
                 "Bearer; when several are sent, every one must be valid (else 401). "
                 "Each operation names the scope it needs (x-vx11-scope: read, chat or "
                 "operate; admin may do everything); a valid credential without it gets "
                 "403 forbidden naming the scope. " + TIMES},
        "security": [{"token": []}, {"bearer": []}],
        "paths": {
            "/health": {"get": {
                "summary": "the set's state: without a credential only status and cause "
                           "(from a view refreshed every 2 s); with a valid credential of "
                           "scope read (or admin) also the DB and each vx11 daemon's state",
                "security": [],
                "responses": {"200": _resp("ok", HEALTH), "503": _resp("degraded", HEALTH),
                              "401": _resp("a token was presented and is not valid", ERR),
                              "429": _resp("too many failed token attempts", ERR)}}},
            "/openapi.json": {"get": {
                "summary": "this document",
                "responses": {"200": _resp("the OpenAPI document", {"type": "object"}),
                              **_errors()}}},
            "/vx11/spawn": {"post": {
                "summary": "spawn a hija from a template, with a TTL (the template's "
                           "default_ttl when ttl_s is not given)",
                "requestBody": _body({"type": "object", "required": ["template"],
                                      "additionalProperties": False, "properties": {
                                          "template": {"type": "string"},
                                          "ttl_s": {"type": "number", "exclusiveMinimum": 0,
                                                    "description": "at least madre.min_ttl "
                                                    "(1 s by default), at most the "
                                                    "template's max_ttl; default: the "
                                                    "template's default_ttl"},
                                          "args": {"type": "object"}}}),
                "responses": {"201": _resp("running (or already ended: see status)", HIJA),
                              "202": _resp("accepted, still starting", HIJA),
                              **_errors(400, 404, 413, 415, 422, 503)}}},
            "/vx11/hijas": {"get": {
                "summary": "hijas, newest first",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": [
                        "live", *STATUSES]}},
                    {"name": "limit", "in": "query", "schema": {
                        "type": "integer", "minimum": 1, "maximum": 10000}}],
                "responses": {"200": _resp("the hijas", {"type": "object", "properties": {
                    "hijas": {"type": "array", "items": HIJA},
                    "count": {"type": "integer"}}}), **_errors(400, 503)}}},
            "/vx11/hijas/{id}": {
                "get": {"summary": "one hija", "parameters": [ID_PARAM],
                        "responses": {"200": _resp("the hija", HIJA),
                                      **_errors(404, 503)}},
                "delete": {"summary": "ask madre to stop a live hija",
                           "parameters": [ID_PARAM],
                           "responses": {"202": _resp("stop requested", HIJA),
                                         **_errors(404, 409, 503)}}},
            "/vx11/policy": {
                "get": {"summary": "profile and live activation windows",
                        "responses": {"200": _resp("policy", {"type": "object", "properties": {
                            "profile": {"type": "string"},
                            "components": {"type": "array", "items": {"type": "string"}},
                            "windows": {"type": "array", "items": WINDOW}}}),
                            **_errors(503)}},
                "post": {"summary": "activate a component for a TTL, or deactivate it",
                         "requestBody": _body({"type": "object", "required": ["component"],
                                               "additionalProperties": False, "properties": {
                                                   "component": {"type": "string",
                                                                 "enum": ["hermes", "switch"]},
                                                   "action": {"type": "string", "enum": [
                                                       "activate", "deactivate"]},
                                                   "ttl_s": {"type": "number",
                                                             "exclusiveMinimum": 0,
                                                             "description": "at least "
                                                             "madre.min_ttl (1 s by "
                                                             "default)"},
                                                   "for": {"type": "string",
                                                           "examples": ["2h"]}}}),
                         "responses": {"201": _resp("window opened", {
                             "type": "object", "properties": {"activated": WINDOW}}),
                                       "200": _resp("deactivated", {"type": "object"}),
                                       **_errors(400, 404, 413, 415, 422, 503)}}},
            "/vx11/route": {"post": {
                "summary": "answer a query: Switch, then Hermes (inside its window), then "
                           "the remote API, else 503 no_route",
                "requestBody": _body({"type": "object", "required": ["query"], "properties": {
                    "query": {"type": "string", "minLength": 1,
                              "description": "at most switch.max_query_chars characters"}}}),
                "responses": {"200": _resp("the answer and the route that served it", {
                    "type": "object", "required": ["route", "latency_ms"], "properties": {
                        "route": {"type": "string", "enum": ["switch", "hermes", "remote"]},
                        "latency_ms": {"type": "number"}, "answer": {"type": "string"},
                        "rule": {"type": "string"}, "model": {"type": "string"},
                        "tried": {"type": "object"}, "details": {"type": "object"}}}),
                              **_errors(400, 413, 415, 422, 502, 503, 504)}}},
            "/v1/chat/completions": {"post": {
                "summary": "OpenAI-compatible chat completions (Hermes inside its window, "
                           "else the remote API); the X-VX11-Route header names the route",
                "description": "Honoured: max_tokens (max_completion_tokens), temperature, "
                               "top_p, stop, seed, presence_penalty, frequency_penalty, "
                               "logit_bias, stream, stream_options.include_usage, top_k, "
                               "min_p, repeat_penalty, response_format (JSON mode: "
                               "json_object, or json_schema with a name and a schema; "
                               "grammar-constrained; a schema llama.cpp cannot use is a "
                               "400 with code invalid_schema). Any other parameter, or "
                               "n > 1, tools, logprobs, ..., is a 400 naming it (param).",
                "requestBody": _body({"type": "object", "required": ["messages"],
                                      "properties": {
                                          "messages": {"type": "array", "minItems": 1,
                                                       "items": {"type": "object"}},
                                          "stream": {"type": "boolean"},
                                          "max_tokens": {"type": "integer", "minimum": 1},
                                          "temperature": {"type": "number", "minimum": 0,
                                                          "maximum": 2},
                                          "top_p": {"type": "number", "minimum": 0,
                                                    "maximum": 1},
                                          "seed": {"type": "integer"},
                                          "stop": {"oneOf": [{"type": "string"}, {
                                              "type": "array", "maxItems": 4,
                                              "items": {"type": "string"}}]},
                                          "response_format": {"type": "object",
                                                              "required": ["type"],
                                                              "properties": {"type": {
                                                                  "enum": ["text",
                                                                           "json_object",
                                                                           "json_schema"]},
                                                                  "json_schema": {
                                                                      "type": "object"}}},
                                          "model": {"type": "string"}}}),
                "responses": {"200": {"description": "a chat completion, or with stream: "
                                      "server-sent events of chunks", "content": {
                                          "application/json": {"schema": {"type": "object"}},
                                          "text/event-stream": {"schema": {"type": "string"}}}},
                              **_errors(400, 404, 413, 415, 502, 503, 504,
                                        schema=OAI_ERR)}}},
            "/v1/models": {"get": {
                "summary": "the configured models, also outside the activation window, "
                           "each with its state (inactive, unloaded, loading, loaded, "
                           "refused, down, remote)",
                "responses": {"200": _resp("OpenAI model list", {"type": "object"}),
                              **_errors(schema=OAI_ERR)}}},
            "/vx11/hermes/metrics": {"get": {
                "summary": "Hermes's Prometheus metrics, relayed from its UNIX socket "
                           "(Hermes has no network of its own)",
                "responses": {"200": {"description": "Prometheus text exposition",
                                      "content": {"text/plain": {"schema": {
                                          "type": "string"}}}},
                              **_errors(502, 503)}}},
        },
        "components": {
            "securitySchemes": {
                "token": {"type": "apiKey", "in": "header", "name": "X-VX11-Token"},
                "bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error", "message"], "properties": {
                    "error": {"type": "string"}, "message": {"type": "string"}}},
                "OpenAIError": {"type": "object", "required": ["error"], "properties": {
                    "error": {"type": "object", "required": ["message", "type"],
                              "properties": {"message": {"type": "string"},
                                             "type": {"type": "string"},
                                             "param": {"type": ["string", "null"]},
                                             "code": {"type": ["string", "null"]}}}}},
                "Hija": {"type": "object", "properties": {
                    "id": {"type": "string"}, "template": {"type": "string"},
                    "args": {"type": "object"}, "ttl_s": {"type": "number"},
                    "port": {"type": ["integer", "null"]}, "unit": {"type": "string"},
                    "main_pid": {"type": ["integer", "null"]},
                    "status": {"type": "string", "enum": STATUSES},
                    **_time("created", False), **_time("started"), **_time("expires"),
                    **_time("ended"),
                    "exit_status": {"type": ["integer", "null"]},
                    "result": {"type": ["string", "null"]},
                    "reason": {"type": ["string", "null"]},
                    **_time("stop_requested"),
                    "memory_max": {"type": ["integer", "null"],
                                   "description": "bytes the hija was allowed (at its end)"},
                    "memory_peak": {"type": ["integer", "null"],
                                    "description": "most bytes it used (at its end)"},
                    "requested_by": {"type": ["string", "null"], "description":
                                     "who asked for the spawn: the credential's name, or "
                                     "vx11ctl (null: recorded before vx11d kept it)"},
                    "stop_requested_by": {"type": ["string", "null"], "description":
                                          "who asked for the stop, likewise"}}}}},
    }
    for (method, path), scope in SCOPE_OF.items():
        open_api["paths"][path][method]["x-vx11-scope"] = scope
    return open_api


def scopes(doc: dict[str, Any]) -> dict[tuple[str, str], str]:
    """``{("POST", "/vx11/spawn"): "operate", ...}`` from an OpenAPI document."""
    return {(method.upper(), path): op["x-vx11-scope"]
            for path, ops in doc["paths"].items() for method, op in ops.items()
            if "x-vx11-scope" in op}


def scopes_table(doc: dict[str, Any]) -> str:
    """The Markdown table of docs/security.md: every operation x every scope, from the
    document's ``x-vx11-scope`` (``admin`` may do everything)."""
    from ..credentials import SCOPES

    head = "| operation | needs | " + " | ".join(f"`{s}`" for s in SCOPES) + " |"
    rows = [head, "|" + "---|" * (len(SCOPES) + 2)]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            need = op.get("x-vx11-scope")
            if need is None:
                cells = ["yes, detail" if s in ("read", "admin") else "yes, status only"
                         for s in SCOPES]
                rows.append(f"| `{method.upper()} {path}` | none | " + " | ".join(cells) + " |")
                continue
            cells = ["yes" if s in (need, "admin") else "403" for s in SCOPES]
            rows.append(f"| `{method.upper()} {path}` | `{need}` | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def text() -> str:
    """The document as the text kept in docs/openapi.json."""
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


async def serve(request: web.Request) -> web.Response:
    """The OpenAPI document."""
    return web.Response(text=text(), content_type="application/json")


def setup(app: web.Application) -> None:
    app.router.add_get("/openapi.json", serve)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--scopes-table"]:
        print(scopes_table(json.loads(text())), end="")
    else:
        print(text(), end="")
