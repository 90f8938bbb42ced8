"""The gateway app in-process: auth on every path but /health, JSON errors, limits, metrics."""

from __future__ import annotations

import asyncio
import sys
import types

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry, generate_latest

from vx11d import config
from vx11d.db import Database
from vx11d.gateway.app import build_app
from vx11d.gateway.context import CTX, GatewayContext
from vx11d.gateway.http import ApiError, read_json

TOKEN = "t0ken-for-tests-0123456789"


def _echo_module():
    """A route module for these tests: echoes a JSON body, or fails in chosen ways."""
    mod = types.ModuleType("vx11_test_echo")

    async def echo(request):
        return web.json_response({"got": await read_json(request)})

    async def boom(request):
        raise RuntimeError("a bug with secret " + TOKEN)

    async def slow(request):
        await asyncio.sleep(30)
        return web.json_response({})

    async def conflict(request):
        raise ApiError(409, "conflict", "already there", id="x")

    async def constraint(request):
        from vx11d.errors import DbIntegrityError
        raise DbIntegrityError("x.db: CHECK constraint failed: expires_at > created_at")

    def setup(app):
        assert app[CTX] is not None
        app.router.add_post("/echo", echo)
        app.router.add_get("/boom", boom)
        app.router.add_get("/slow", slow)
        app.router.add_get("/conflict", conflict)
        app.router.add_get("/constraint", constraint)

    mod.setup = setup
    sys.modules["vx11_test_echo"] = mod
    return "vx11_test_echo"


@pytest.fixture
def client_factory(dbpath):
    clients = []
    loop = asyncio.new_event_loop()

    def make(yaml_text=""):
        cfg = config.parse(yaml_text, "test.yml")
        ctx = GatewayContext(cfg=cfg, db=Database(dbpath), registry=CollectorRegistry())
        app = build_app(ctx, TOKEN, modules=[_echo_module()])
        client = TestClient(TestServer(app), loop=loop)
        loop.run_until_complete(client.start_server())
        clients.append(client)
        return client, ctx

    yield make, loop
    for c in clients:
        loop.run_until_complete(c.close())
    loop.close()


def run(loop, coro):
    return loop.run_until_complete(coro)


def test_health_is_open_everything_else_needs_a_token(client_factory):
    make, loop = client_factory
    c, _ = make()

    async def go():
        r = await c.get("/health")
        assert r.status == 200 and (await r.json())["status"] == "ok"
        for method, path in [("GET", "/vx11/hijas"), ("POST", "/echo"), ("GET", "/nope"),
                             ("DELETE", "/vx11/hijas/1"), ("POST", "/health"),
                             ("GET", "/metrics"), ("GET", "/health/"), ("GET", "/HEALTH"),
                             ("GET", "/health/../vx11/hijas")]:
            r = await c.request(method, path)
            assert r.status == 401, (method, path, r.status)
            body = await r.json()
            assert body["error"] == "unauthorized"
            assert TOKEN not in await r.text()
        r = await c.get("/nope", headers={"X-VX11-Token": TOKEN})
        assert r.status == 404 and (await r.json())["error"] == "not_found"
        r = await c.post("/echo", json={"a": 1}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status == 200 and (await r.json()) == {"got": {"a": 1}}

    run(loop, go())


@pytest.mark.parametrize("headers", [
    {"X-VX11-Token": "wrong"},
    {"X-VX11-Token": "x" * 5000},
    {"Authorization": "Bearer " + "é" * 20},
    {"Authorization": "Basic " + TOKEN},
    {"X-VX11-Token": TOKEN + "x"},
])
def test_bad_tokens_are_401_never_500(client_factory, headers):
    make, loop = client_factory
    c, _ = make()

    async def go():
        r = await c.get("/conflict", headers=headers)
        assert r.status == 401

    run(loop, go())


def test_missing_tokens_do_not_lock_out_the_client_smoke_on_default_config(client_factory):
    """Regression: vx11ctl smoke's 401 sweep (dozens of tokenless requests) tripped the
    default auth_fail_limit (10) and its own spawn then got 429 on a packaged install."""
    make, loop = client_factory
    c, _ctx = make("gateway:\n  auth_fail_limit: 3\n  auth_fail_window: 60s\n")

    async def go():
        for _ in range(10):
            assert (await c.get("/conflict")).status == 401
        r = await c.get("/conflict", headers={"X-VX11-Token": TOKEN})
        assert r.status != 429

    run(loop, go())


def test_repeated_failures_get_429_with_retry_after(client_factory):
    make, loop = client_factory
    c, ctx = make("gateway:\n  auth_fail_limit: 3\n  auth_fail_window: 60s\n")

    async def go():
        for _ in range(3):
            assert (await c.get("/conflict", headers={"X-VX11-Token": "bad"})).status == 401
        r = await c.get("/conflict", headers={"X-VX11-Token": TOKEN})
        assert r.status == 429
        assert 1 <= int(r.headers["Retry-After"]) <= 61
        assert (await c.get("/health")).status == 200

    run(loop, go())
    text = generate_latest(ctx.registry).decode()
    assert 'vx11_gateway_auth_failures_total{reason="invalid"} 3.0' in text
    assert 'vx11_gateway_auth_failures_total{reason="rate_limited"} 1.0' in text


@pytest.mark.parametrize("body,ctype,status,code", [
    (b"{not json", "application/json", 400, "bad_json"),
    (b"", "application/json", 400, "empty_body"),
    (b"[1,2]", "application/json", 422, "bad_body"),
    (b"\xff\xfe", "application/json", 400, "bad_json"),
    (b"a=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    (b"{" + b'"a":' * 10 + b"1" + b"}" * 10, "application/json", 400, "bad_json"),
])
def test_bad_bodies_get_clear_4xx(client_factory, body, ctype, status, code):
    make, loop = client_factory
    c, _ = make()

    async def go():
        r = await c.post("/echo", data=body, headers={"X-VX11-Token": TOKEN,
                                                      "Content-Type": ctype})
        assert r.status == status
        assert (await r.json())["error"] == code

    run(loop, go())


def test_oversized_body_is_413(client_factory):
    make, loop = client_factory
    c, _ = make("gateway:\n  max_body: 2K\n")

    async def go():
        r = await c.post("/echo", json={"x": "y" * 5000}, headers={"X-VX11-Token": TOKEN})
        assert r.status == 413 and (await r.json())["error"] == "too_large"

    run(loop, go())


def test_bug_is_a_logged_500_without_the_secret(client_factory, caplog):
    from vx11d import journal

    journal.register_secret(TOKEN)
    make, loop = client_factory
    c, _ = make()
    caplog.handler.addFilter(journal.RedactFilter())

    async def go():
        r = await c.get("/boom", headers={"X-VX11-Token": TOKEN})
        assert r.status == 500 and (await r.json())["error"] == "internal"
        assert TOKEN not in await r.text()

    run(loop, go())
    assert any("unhandled error" in r.getMessage() for r in caplog.records)
    # the logged traceback holds the exception text, with the secret redacted
    assert "RuntimeError: a bug with secret [redacted]" in caplog.text
    assert TOKEN not in caplog.text


def test_request_timeout_is_504(client_factory):
    make, loop = client_factory
    c, _ = make("gateway:\n  request_timeout: 1s\n")

    async def go():
        r = await c.get("/slow", headers={"X-VX11-Token": TOKEN})
        assert r.status == 504 and (await r.json())["error"] == "timeout"

    run(loop, go())


def test_api_error_and_metrics_labels_are_bounded(client_factory):
    make, loop = client_factory
    c, ctx = make()

    async def go():
        r = await c.get("/conflict", headers={"X-VX11-Token": TOKEN})
        assert r.status == 409 and (await r.json()) == {"error": "conflict",
                                                        "message": "already there", "id": "x"}
        for i in range(20):
            await c.get(f"/random/{i}", headers={"X-VX11-Token": TOKEN})

    run(loop, go())
    text = generate_latest(ctx.registry).decode()
    assert 'vx11_gateway_requests_total{code="409",method="GET",route="/conflict"} 1.0' in text
    assert "/random/" not in text


@pytest.mark.parametrize(("headers", "status"), [
    ([("Authorization", f"Bearer {TOKEN}"), ("X-VX11-Token", "wrong")], 401),
    ([("X-VX11-Token", "wrong"), ("Authorization", f"Bearer {TOKEN}")], 401),
    ([("X-VX11-Token", TOKEN), ("Authorization", "Bearer wrong")], 401),
    ([("Authorization", "Bearer wrong"), ("X-VX11-Token", TOKEN)], 401),
    ([("X-VX11-Token", TOKEN), ("Authorization", f"Basic {TOKEN}")], 401),
    ([("X-VX11-Token", TOKEN), ("X-VX11-Token", "wrong")], 401),
    ([("X-VX11-Token", "wrong"), ("X-VX11-Token", TOKEN)], 401),
    ([("X-VX11-Token", TOKEN), ("Authorization", f"Bearer {TOKEN}")], 200),
    ([("Authorization", f"Bearer {TOKEN}"), ("X-VX11-Token", TOKEN)], 200),
    ([("X-VX11-Token", TOKEN), ("X-VX11-Token", TOKEN)], 200),
])
def test_token_header_rule_every_credential_presented_must_be_valid(client_factory, headers,
                                                                     status):
    from multidict import CIMultiDict

    make, loop = client_factory
    c, ctx = make()

    async def go():
        r = await c.post("/echo", json={"a": 1}, headers=CIMultiDict(headers))
        assert r.status == status, headers
        if status == 401:
            assert (await r.json())["error"] == "unauthorized"

    run(loop, go())
    if status == 401:
        text = generate_latest(ctx.registry).decode()
        assert 'vx11_gateway_auth_failures_total{reason="invalid"} 1.0' in text


def test_a_request_that_is_not_http_is_one_warning_line_not_a_traceback():
    import logging

    from aiohttp.http_exceptions import BadHttpMessage

    from vx11d.gateway.http import BadRequestLog

    try:
        raise BadHttpMessage("Invalid header value char:\n\n  b'X-Bad: \\x00'")
    except BadHttpMessage:
        import sys
        rec = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1,
                                "Error handling request from %s", ("127.0.0.1",),
                                sys.exc_info())
    assert BadRequestLog().filter(rec)
    assert rec.levelno == logging.WARNING and rec.exc_info is None
    assert rec.getMessage() == "bad HTTP request (answered 400): Invalid header value char:"


def test_a_db_constraint_refusal_is_a_422_never_a_500(client_factory):
    make, loop = client_factory
    c, _ = make()

    async def go():
        r = await c.get("/constraint", headers={"X-VX11-Token": TOKEN})
        assert r.status == 422 and (await r.json())["error"] == "invalid"

    run(loop, go())


def _scoped_client(client_factory_args, yaml_text=""):
    from vx11d.credentials import Credential, digest
    from vx11d.gateway.auth import Keyring

    dbpath, loop = client_factory_args
    creds = [Credential(n, frozenset({n}), digest(f"{n}-secret-0123456789"), "", "")
             for n in ("read", "chat", "operate")]
    cfg = config.parse(yaml_text, "test.yml")
    ctx = GatewayContext(cfg=cfg, db=Database(dbpath), registry=CollectorRegistry())
    app = build_app(ctx, Keyring.of(creds), modules=[_echo_module(), "vx11d.gateway.hijas"])
    client = TestClient(TestServer(app), loop=loop)
    loop.run_until_complete(client.start_server())
    return client, ctx


def test_forbidden_is_403_naming_the_scope_and_not_counted_toward_429(dbpath, caplog):
    """A valid credential outside its scope is 403 however often it asks; only wrong
    credentials count toward the limiter. An undocumented route is admin-only."""
    loop = asyncio.new_event_loop()
    c, ctx = _scoped_client((dbpath, loop), "gateway:\n  auth_fail_limit: 3\n")

    async def go():
        for _ in range(20):
            r = await c.post("/vx11/spawn", json={"template": "x", "ttl_s": 5},
                             headers={"X-VX11-Token": "read-secret-0123456789"})
            assert r.status == 403
            body = await r.json()
            assert body["error"] == "forbidden" and body["scope"] == "operate"
            assert "lacks scope operate" in body["message"] and "read" in body["message"]
        r = await c.post("/echo", json={}, headers={"X-VX11-Token": "operate-secret-0123456789"})
        assert r.status == 403 and (await r.json())["scope"] == "admin"
        r = await c.get("/vx11/hijas", headers={"X-VX11-Token": "read-secret-0123456789"})
        assert r.status == 200
        for _ in range(3):
            r = await c.get("/vx11/hijas", headers={"X-VX11-Token": "wrong-0123456789abcdef"})
            assert r.status == 401
        r = await c.get("/vx11/hijas", headers={"X-VX11-Token": "read-secret-0123456789"})
        assert r.status == 429
        text = generate_latest(ctx.registry).decode()
        assert 'vx11_gateway_auth_failures_total{reason="forbidden"} 21.0' in text

    caplog.set_level("INFO", logger="vx11.gateway")
    try:
        run(loop, go())
    finally:
        loop.run_until_complete(c.close())
        loop.close()
    denied = [r for r in caplog.records if getattr(r, "VX11_EVENT", "") == "auth_forbidden"]
    assert len(denied) == 21 and {r.VX11_CREDENTIAL for r in denied} == {"read", "operate"}
    failed = [r for r in caplog.records if getattr(r, "VX11_EVENT", "") == "auth_failed"]
    assert failed and all(r.VX11_CREDENTIAL == "none" for r in failed)
    blocked = [r for r in caplog.records if getattr(r, "VX11_EVENT", "") == "auth_client_blocked"]
    assert len(blocked) == 1 and blocked[0].VX11_CLIENT == "127.0.0.1", blocked
    assert "after 3 failed token attempts" in blocked[0].getMessage()


def test_operate_requests_are_journaled_with_the_credential_name(dbpath, caplog):
    loop = asyncio.new_event_loop()
    c, _ = _scoped_client((dbpath, loop), "gateway:\n  spawn_wait: 0.1s\n")
    caplog.set_level("INFO", logger="vx11.gateway")

    async def go():
        r = await c.delete("/vx11/hijas/aaaaaaaaaa",
                           headers={"Authorization": "Bearer operate-secret-0123456789"})
        assert r.status == 404

    try:
        run(loop, go())
    finally:
        loop.run_until_complete(c.close())
        loop.close()
    rec = [r for r in caplog.records if getattr(r, "VX11_EVENT", "") == "api_request"]
    assert len(rec) == 1 and rec[0].VX11_CREDENTIAL == "operate" and rec[0].VX11_STATUS == "404"
    assert "operate-secret" not in caplog.text


def test_smokes_missing_token_probes_read_as_an_attack_now_debug_and_not_counted(
        client_factory, caplog):
    """Regression (issue 24 item 10): `vx11ctl smoke`'s own 401 sweep left 16
    warning-level "rejected missing credential" lines and counted them as auth
    failures. Its requests now carry X-VX11-Probe with a credential of its own; from
    loopback with a valid one they are still refused (401) but logged at debug and not
    counted. A probe header that proves nothing is a failed guess."""
    make, loop = client_factory
    c, ctx = make()

    async def go():
        with caplog.at_level("DEBUG", logger="vx11.gateway"):
            for path in ("/vx11/hijas", "/nope"):
                r = await c.get(path, headers={"X-VX11-Probe": TOKEN})
                assert r.status == 401 and (await r.json())["error"] == "unauthorized"
        text = generate_latest(ctx.registry).decode()
        assert 'vx11_gateway_auth_failures_total{reason="missing"} 0.0' in text, text
        assert 'vx11_gateway_auth_failures_total{reason="invalid"} 0.0' in text, text
        assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
        assert [r for r in caplog.records if getattr(r, "VX11_EVENT", "") == "auth_probe"]
        caplog.clear()
        r = await c.get("/vx11/hijas", headers={"X-VX11-Probe": "not-the-token-0123"})
        assert r.status == 401
        text = generate_latest(ctx.registry).decode()
        assert 'vx11_gateway_auth_failures_total{reason="invalid"} 1.0' in text, text
        assert [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
        # with a valid token beside it the probe header changes nothing
        r = await c.post("/echo", json={"a": 1},
                         headers={"X-VX11-Probe": TOKEN, "X-VX11-Token": TOKEN})
        assert r.status == 200

    run(loop, go())


def _counting_contribution(app_ctx, gate=None):
    """A /health contribution that counts its calls (each stands for a D-Bus round)."""
    calls = []

    async def contribute(app):
        calls.append(1)
        if gate is not None:
            await gate.wait()
        return {"probe": len(calls)}

    app_ctx.extras.setdefault("health", []).append(contribute)
    return calls


def test_health_after_a_quiet_period_gets_a_fresh_view_and_none_is_made_meanwhile(
        client_factory):
    """Issue 25: no refresh on a clock; the first request after a quiet spell refreshes."""
    from vx11d.gateway import health

    make, loop = client_factory
    c, ctx = make()
    view = c.server.app[health.VIEW]
    now = [view.fresh_at]  # the view made at start, as fresh as it gets
    view.clock = lambda: now[0]
    calls = _counting_contribution(ctx)

    async def go():
        await c.get("/health")
        before = (len(calls), view.checked)
        await asyncio.sleep(0.3)  # quiet: nothing refreshes by itself
        assert len(calls) == before[0]
        now[0] += 60.0  # a quiet minute
        r = await c.get("/health")
        assert r.status == 200 and await r.json() == {"status": "ok"}
        assert len(calls) == before[0] + 1, "a stale view must be refreshed for the request"
        assert view.fresh_at == now[0]
        now[0] += health.MAX_AGE / 2  # within the bound: the view is reused
        await c.get("/health")
        assert len(calls) == before[0] + 1

    run(loop, go())


def test_a_flood_of_concurrent_health_requests_makes_at_most_one_refresh(client_factory):
    from vx11d.gateway import health

    make, loop = client_factory
    c, ctx = make()
    view = c.server.app[health.VIEW]
    now = [view.fresh_at]  # the view made at start, as fresh as it gets
    view.clock = lambda: now[0]
    c.server.app[health.THROTTLE].rate = 1e9  # the tarpit is another test's concern
    c.server.app[health.THROTTLE].burst = 1e9
    gate = asyncio.Event()
    calls = _counting_contribution(ctx, gate)

    async def go():
        now[0] += 60.0
        n0 = view.refreshes
        flood = [asyncio.ensure_future(c.get("/health")) for _ in range(50)]
        while not calls:  # the one refresh is waiting on the gate
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        gate.set()
        answers = await asyncio.gather(*flood)
        assert all(r.status == 200 for r in answers)
        assert len(calls) == 1 and view.refreshes == n0 + 1

    run(loop, go())


def test_a_db_fault_a_request_met_is_in_the_public_health_at_once(client_factory):
    from vx11d.errors import DbReadOnly
    from vx11d.gateway import health

    make, loop = client_factory
    c, ctx = make()
    view = c.server.app[health.VIEW]
    view.clock = lambda: view.fresh_at  # the view never ages in this test

    async def go():
        assert (await c.get("/health")).status == 200
        ctx.db._note(DbReadOnly(f"{ctx.db.path}: attempt to write a readonly database"))
        r = await c.get("/health")
        assert r.status == 503 and (await r.json())["cause"] == "read_only"

    run(loop, go())
