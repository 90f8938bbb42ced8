"""The gateway's hija and policy routes in-process, against a real DB file (no madre)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from tests.support import poll_for
from vx11d import config, hijas
from vx11d.db import Database
from vx11d.gateway.app import ROUTE_MODULES, build_app
from vx11d.gateway.context import GatewayContext

TOKEN = "t0ken-for-tests-0123456789"
H = {"X-VX11-Token": TOKEN}
REPO = Path(__file__).resolve().parents[2]
CFG = """
gateway: {spawn_wait: 0.2s, auth_fail_limit: 1000, madre_wake_socket: /nonexistent/m.sock}
madre:
  templates:
    sleeper: {command: [/usr/bin/sleep, infinity], max_ttl: 60s}
    greet:
      command: [/usr/bin/echo, "{who}"]
      args: {who: {pattern: "^[a-z]{1,8}$", required: true}}
"""


@pytest.fixture
def gw(dbpath):
    loop = asyncio.new_event_loop()
    cfg = config.parse(CFG, "t.yml")
    ctx = GatewayContext(cfg=cfg, db=Database(dbpath), registry=CollectorRegistry())
    app = build_app(ctx, TOKEN)
    client = TestClient(TestServer(app), loop=loop)
    loop.run_until_complete(client.start_server())

    def call(method, path, body=None, headers=H, raw=None):
        async def go():
            kw = {"headers": headers}
            if raw is not None:
                kw["data"] = raw
            elif body is not None:
                kw["json"] = body
            r = await client.request(method, path, **kw)
            text = await r.text()
            return r.status, (json.loads(text) if text.startswith(("{", "[")) else text)
        return loop.run_until_complete(go())

    yield call, app, ctx
    loop.run_until_complete(client.close())
    loop.close()


def registered(app):
    out = set()
    for r in app.router.routes():
        if r.method == "HEAD":
            continue
        out.add((r.method, r.resource.canonical))
    return out


def test_every_registered_route_needs_a_token_but_health(gw):
    call, app, _ = gw
    routes = registered(app)
    assert ("POST", "/vx11/spawn") in routes and ("GET", "/vx11/policy") in routes
    for method, path in [*sorted(routes), ("GET", "/nope"), ("POST", "/vx11/x")]:
        status, body = call(method, path.replace("{id}", "abcdefghij"), {}, headers={})
        if (method, path) == ("GET", "/health"):
            assert status == 200
        else:
            assert status == 401, (method, path)
            err = body["error"]  # OpenAI's error object on the /v1/ paths
            assert (err["code"] if path.startswith("/v1/") else err) == "unauthorized"
    status, _ = call("GET", "/vx11/hijas", headers={"X-VX11-Token": "wrong"})
    assert status == 401


def test_served_openapi_equals_the_file_and_documents_every_route(gw):
    call, app, _ = gw
    status, doc = call("GET", "/openapi.json")
    assert status == 200
    assert doc == json.loads((REPO / "docs" / "openapi.json").read_text())
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    missing = registered(app) - documented
    assert not missing, f"routes missing from docs/openapi.json: {missing}"
    assert "vx11d.gateway.hijas" in ROUTE_MODULES


@pytest.mark.parametrize(("body", "code"), [
    ({"template": "sleeper", "ttl_s": 61}, 422),          # above max_ttl
    ({"template": "sleeper", "ttl_s": 0}, 422),
    ({"template": "sleeper", "ttl_s": "10"}, 422),
    ({"template": "nope", "ttl_s": 10}, 404),             # unknown template
    ({"template": "greet", "ttl_s": 10}, 422),            # required arg missing
    ({"template": "greet", "ttl_s": 10, "args": {"who": "$(id)"}}, 422),
    ({"template": "sleeper", "ttl_s": 10, "command": "/bin/sh"}, 422),  # no raw commands
    ({"ttl_s": 10}, 422),
    ([1, 2], 422),
])
def test_spawn_refuses_bad_input_with_clear_errors(gw, body, code):
    call, _, ctx = gw
    status, resp = call("POST", "/vx11/spawn", body)
    assert status == code, resp
    assert resp["message"]
    assert ctx.db.query("SELECT count(*) FROM spawner_hijas")[0][0] == 0


def test_spawn_bad_bodies(gw):
    call, _, _ = gw
    assert call("POST", "/vx11/spawn", raw=b"{nope", headers={**H, "Content-Type":
                                                             "application/json"})[0] == 400
    assert call("POST", "/vx11/spawn", raw=b"x", headers={**H, "Content-Type":
                                                          "text/plain"})[0] == 415
    big = b'{"a":"' + b"x" * 2_000_000 + b'"}'
    assert call("POST", "/vx11/spawn", raw=big, headers={**H, "Content-Type":
                                                         "application/json"})[0] == 413


def test_spawn_default_ttl_honoured_when_ttl_s_not_given(gw):
    """Regression: the template's default_ttl did nothing (422 ttl_s is required)."""
    call, _, _ctx = gw
    status, row = call("POST", "/vx11/spawn", {"template": "sleeper"})
    assert status == 202 and row["ttl_s"] == 60, row  # default_ttl 60, max_ttl 60s


def test_spawn_without_madre_is_accepted_as_202_then_listed_and_stoppable(gw):
    call, _, ctx = gw
    status, row = call("POST", "/vx11/spawn", {"template": "sleeper", "ttl_s": 5})
    assert status == 202 and row["status"] == "requested"
    assert row["unit"] == f"vx11-hija-{row['id']}.service"
    status, listing = call("GET", "/vx11/hijas?status=live")
    assert status == 200 and [h["id"] for h in listing["hijas"]] == [row["id"]]
    assert call("GET", f"/vx11/hijas/{row['id']}")[1]["template"] == "sleeper"
    assert call("GET", "/vx11/hijas/zzzzzzzzzz")[0] == 404
    # a dot-segment path is normalised to /vx11/etc (no such route) or kept as an id that
    # is not one: 404 with a token, 401 without (auth runs before routing answers)
    for odd in ("/vx11/hijas/../etc", "/vx11/hijas/%2e%2e/etc", "/vx11/hijas/..%2Fetc"):
        status, body = call("GET", odd)
        assert status == 404 and body["error"] == "not_found", (odd, status, body)
        assert call("GET", odd, headers={})[0] == 401
    assert call("GET", "/vx11/hijas?status=bogus")[0] == 400
    assert call("GET", "/vx11/hijas?limit=x")[0] == 400
    status, stopped = call("DELETE", f"/vx11/hijas/{row['id']}")
    assert status == 202 and stopped["stop_requested_at"]
    assert call("DELETE", "/vx11/hijas/zzzzzzzzzz")[0] == 404
    ctx.db.write(lambda c: c.execute("UPDATE spawner_hijas SET status='stopped' WHERE id=?",
                                     (row["id"],)))
    assert call("DELETE", f"/vx11/hijas/{row['id']}")[0] == 409


def test_spawn_answers_201_once_madre_marked_it_running(gw):
    call, _, ctx = gw
    ctx.cfg = config.parse(CFG.replace("0.2s", "5s"), "t.yml")

    def fake_madre():
        for _ in range(500):
            time.sleep(0.01)
            if ctx.db.write(lambda c: c.execute(
                    "UPDATE spawner_hijas SET status='running', main_pid=42 WHERE "
                    "status='requested'").rowcount):
                return

    t = threading.Thread(target=fake_madre)
    t.start()
    status, row = call("POST", "/vx11/spawn", {"template": "sleeper", "ttl_s": 5})
    t.join()
    assert status == 201 and row["status"] == "running" and row["main_pid"] == 42


def test_api_mixed_epoch_floats_and_iso_now_every_time_has_an_iso_field(gw):
    """Regression (issue 24 item 13): hija and window JSON gave epoch floats
    (created_at, ended_at) while /health gave ISO 8601. Each time now has an ISO 8601
    UTC field (created, expires, ended, ...); the epoch X_at fields keep their meaning."""
    call, _, _ = gw
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    _, row = call("POST", "/vx11/spawn", {"template": "sleeper", "ttl_s": 5})
    _, stopped = call("DELETE", f"/vx11/hijas/{row['id']}")
    _, win = call("POST", "/vx11/policy", {"component": "hermes", "for": "2h"})
    _, pol = call("GET", "/vx11/policy")
    for obj in (row, stopped, win["activated"], *pol["windows"]):
        for k in [k for k in obj if k.endswith("_at")]:
            new, old = obj[k[:-3]], obj[k]
            if old is None:
                assert new is None, (k, obj)
                continue
            assert isinstance(old, float | int) and iso.match(new), (k, obj)
            assert abs(datetime.fromisoformat(new).timestamp() - old) < 0.001, (k, obj)
    assert stopped["stop_requested"] and row["created"] and win["activated"]["expires"]


def test_policy_activate_list_deactivate(gw):
    call, _, _ = gw
    status, body = call("POST", "/vx11/policy", {"component": "hermes", "for": "2h"})
    assert status == 201 and body["activated"]["component"] == "hermes"
    status, pol = call("GET", "/vx11/policy")
    assert status == 200 and pol["profile"] == "solo_madre"
    assert [w["component"] for w in pol["windows"]] == ["hermes"]
    for bad, code in (({"component": "hermes"}, 422), ({"component": "hermes", "for": "x"},
                                                       422),
                      ({"component": "hermes", "ttl_s": 10**9}, 422),
                      ({"component": "nope", "ttl_s": 60}, 404),
                      ({"component": "hermes", "action": "explode", "ttl_s": 60}, 422),
                      ({"component": "hermes", "ttl_s": 60, "extra": 1}, 422)):
        assert call("POST", "/vx11/policy", bad)[0] == code, bad
    status, body = call("POST", "/vx11/policy", {"component": "hermes",
                                                 "action": "deactivate"})
    assert status == 200 and body["windows_ended"] == 1
    assert call("GET", "/vx11/policy")[1]["windows"] == []


def test_health_stays_open_and_ok_without_a_bus(gw):
    call, _, _ = gw
    status, body = call("GET", "/health", headers={})
    assert (status, body) == (200, {"status": "ok"})
    status, body = call("GET", "/health")
    assert status == 200 and body["status"] == "ok" and "daemons" in body
    assert body["db"] == {"status": "ok"}


def test_health_without_a_token_tells_strangers_only_the_aggregate(gw):
    """Issue 15 finding 4: no StatusText, addresses or paths for a request without token."""
    call, _, ctx = gw
    for f in os.listdir(os.path.dirname(ctx.db.path)):
        if f.startswith("vx11.db"):
            os.unlink(os.path.join(os.path.dirname(ctx.db.path), f))
    status, body = poll_for(lambda: (r := call("GET", "/health", headers={}))[0] == 503 and r,
                            timeout=15, what="/health to notice the deleted DB")
    assert body == {"status": "degraded", "cause": "db_missing"}
    status, body = call("GET", "/health")
    assert status == 503 and body["db"]["cause"] == "db_missing"
    assert ctx.db.path in body["db"]["message"] and body["db"]["since"].endswith("Z")
    assert call("GET", "/health", headers={"X-VX11-Token": "wrong"})[0] == 401


def test_db_missing_spawn_is_503_with_retry_after_and_the_cause(gw):
    call, _, ctx = gw
    for f in os.listdir(os.path.dirname(ctx.db.path)):
        if f.startswith("vx11.db"):
            os.unlink(os.path.join(os.path.dirname(ctx.db.path), f))
    status, body = call("POST", "/vx11/spawn", {"template": "sleeper", "ttl_s": 5})
    assert status == 503 and body["error"] == "unavailable" and body["cause"] == "db_missing"
    status, body = call("GET", "/vx11/hijas")
    assert status == 503 and body["cause"] == "db_missing"
    assert not os.path.exists(ctx.db.path), "the gateway re-created a deleted DB"


def test_hija_ids_are_unit_name_safe():
    ids = {hijas.new_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(hijas.ID_RE.match(i) for i in ids)


HOSTILE_BODIES = [
    pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested deeper", id="deep-100k"),
    pytest.param(b'{"a":' * 65 + b"1" + b"}" * 65, "nested deeper", id="deep-65"),
    pytest.param(b'{"template":"sleeper","ttl_s":NaN}', "NaN", id="nan"),
    pytest.param(b'{"template":"sleeper","ttl_s":Infinity}', "Infinity", id="infinity"),
    pytest.param(b'{"template":"sleeper","ttl_s":-Infinity}', "Infinity", id="-infinity"),
    pytest.param(b'{"template":"sleeper","ttl_s":1e999}', "not finite", id="overflow"),
    pytest.param(b'{"template":"sleeper","template":"web","ttl_s":5}', "twice",
                 id="duplicate-key"),
    pytest.param(b'{"template":"\\ud800","ttl_s":5}', "surrogate", id="lone-surrogate"),
    pytest.param(b'{"\\udfff":1}', "surrogate", id="lone-surrogate-key"),
    pytest.param(b'{"ttl_s":' + b"9" * 5000 + b"}", "digits", id="huge-int"),
]
JSON_ENDPOINTS = ["/vx11/spawn", "/vx11/policy", "/vx11/route", "/v1/chat/completions"]


@pytest.mark.parametrize("path", JSON_ENDPOINTS)
@pytest.mark.parametrize(("raw", "says"), HOSTILE_BODIES)
def test_insane_json_bodies_are_400_on_every_json_endpoint_never_500(gw, path, raw, says):
    call, _, ctx = gw
    status, resp = call("POST", path, raw=raw, headers={**H, "Content-Type":
                                                        "application/json"})
    assert status == 400, resp
    if path.startswith("/v1/"):  # OpenAI's error shape, so the official SDK raises right
        resp = {"error": resp["error"]["code"], "message": resp["error"]["message"]}
    assert resp["error"] == "bad_json" and says in resp["message"], resp
    assert ctx.db.query("SELECT count(*) FROM spawner_hijas")[0][0] == 0
    assert ctx.db.query("SELECT count(*) FROM activations")[0][0] == 0


def test_sane_json_with_escapes_and_depth_64_is_accepted(gw):
    call, _, _ = gw
    nested = b'{"query":"\\ud83d\\ude00 2+2","x":' + b"[" * 62 + b"]" * 62 + b"}"
    status, resp = call("POST", "/vx11/route", raw=nested,
                        headers={**H, "Content-Type": "application/json"})
    assert status != 400, resp


@pytest.mark.parametrize("ttl", [1e-300, 1e-7, 0.5, 0.999])
@pytest.mark.parametrize("component", ["switch", "hermes"])
def test_tiny_activation_ttl_is_422_not_a_db_constraint_500(gw, ttl, component):
    call, _, ctx = gw
    status, resp = call("POST", "/vx11/policy", {"component": component,
                                                 "action": "activate", "ttl_s": ttl})
    assert status == 422 and "min_ttl" in resp["message"], resp
    assert ctx.db.query("SELECT count(*) FROM activations")[0][0] == 0
    status, resp = call("POST", "/vx11/policy", {"component": component, "for": "10ms"})
    assert status == 422 and "min_ttl" in resp["message"], resp


@pytest.mark.parametrize("ttl", [1e-300, 1e-7, 0.5])
def test_tiny_spawn_ttl_is_422_not_a_hija_that_dies_at_once(gw, ttl):
    call, _, ctx = gw
    status, resp = call("POST", "/vx11/spawn", {"template": "sleeper", "ttl_s": ttl})
    assert status == 422 and "min_ttl" in resp["message"], resp
    assert ctx.db.query("SELECT count(*) FROM spawner_hijas")[0][0] == 0


def test_ttl_at_the_minimum_is_accepted_and_the_minimum_is_config(gw):
    call, _, ctx = gw
    assert call("POST", "/vx11/spawn", {"template": "sleeper", "ttl_s": 1})[0] == 202
    assert call("POST", "/vx11/policy", {"component": "switch", "ttl_s": 1})[0] == 201
    ctx.cfg = config.parse(CFG.replace("madre:\n", "madre:\n  min_ttl: 5s\n"), "t.yml")
    assert call("POST", "/vx11/spawn", {"template": "sleeper", "ttl_s": 4})[0] == 422
    assert call("POST", "/vx11/policy", {"component": "switch", "ttl_s": 4})[0] == 422
    with pytest.raises(config.ConfigError, match="below min_ttl"):
        config.parse(CFG.replace("madre:\n", "madre:\n  min_ttl: 2m\n"), "t.yml")


def test_tokenless_health_flood_makes_no_dbus_call_per_request(gw, monkeypatch):
    """Issue 15 finding 4: each tokenless /health opened a system-bus connection."""
    call, _, _ = gw
    from vx11d.gateway import policy

    calls: list[int] = []
    monkeypatch.setattr(policy, "_unit_states", lambda: calls.append(1) or {})
    for _ in range(40):
        assert call("GET", "/health", headers={})[1] == {"status": "ok"}
    assert len(calls) <= 3, f"{len(calls)} D-Bus reads for 40 tokenless requests"
    call("GET", "/health")  # the detail, with the token, reads at once
    assert len(calls) >= 1
