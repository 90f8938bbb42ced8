"""The route chain end to end: the gateway app (in-process, loopback) → the real Hermes
worker (a child process on a real UNIX socket) → llama.cpp on a generated GGUF; the
remote fallback against llama-cpp-python's own OpenAI-compatible server."""

from __future__ import annotations

import json

import openai
import pytest
from prometheus_client import CollectorRegistry

from tests.hermes_support import (
    TOKEN,
    AppThread,
    WorkerProc,
    chain_gateway,
    err_code,
    http,
    model,
    remote_llama,
    running_worker,
)
from tests.support import poll_for
from vx11d import config
from vx11d.db import Database
from vx11d.gateway.app import build_app
from vx11d.gateway.context import GatewayContext
from vx11d.hermes.testmodel import endless_bias
from vx11d.hijas import activate, deactivate

REMOTE_KEY = "remote-key-for-tests-0123456789"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("models"))
    return {"tiny": model("tiny", d), "medium": model("medium", d)}


@pytest.fixture(scope="module")
def worker(tmp_path_factory, models):
    with running_worker(str(tmp_path_factory.mktemp("hermes")), models["tiny"]) as w:
        yield w


@pytest.fixture(scope="module")
def remote_server(tmp_path_factory, models):
    """llama_cpp.server on loopback serving the tiny model, with an API key."""
    with remote_llama(models["tiny"], tmp_path_factory.mktemp("remote"), REMOTE_KEY) as r:
        yield r


@pytest.fixture
def gateway(dbpath, worker):
    made = []

    def make(remote: dict | None = None, **hermes):
        gw, ctx = chain_gateway(dbpath, worker, remote, **{"max_tokens": 16, **hermes})
        made.append(gw)
        return gw, ctx

    yield make
    for gw in made:
        gw.close()


def test_route_chain_switch_then_hermes_with_real_generation(gateway):
    gw, ctx = gateway()
    activate(ctx.db, ctx.cfg, "hermes", 3600, "test")
    status, body, _ = http("POST", gw.url + "/vx11/route", {"query": "2+2"})
    assert (status, body["route"], body["answer"]) == (200, "switch", "4")
    assert body["latency_ms"] >= 0  # how fast: bench/switch.py and bench/hermes.py
    status, body, _ = http("POST", gw.url + "/vx11/route", {"query": "tell me a story"})
    assert status == 200, body
    assert body["route"] == "hermes" and isinstance(body["answer"], str)
    assert body["usage"]["completion_tokens"] > 0 and body["latency_ms"] > 0
    status, body, _ = http("POST", gw.url + "/vx11/route", {"query": "9**9**9"})
    assert (status, body["error"]) == (422, "switch_refused")
    status, body, _ = http("POST", gw.url + "/vx11/route", {"query": "2+2"}, token=None)
    assert status == 401
    status, health, _ = http("GET", gw.url + "/health")  # the detail needs the token
    assert health["hermes"] == {"enabled": True, "state": "loaded"}


def test_openai_client_against_the_gateway(gateway):
    gw, ctx = gateway()
    activate(ctx.db, ctx.cfg, "hermes", 3600, "test")
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TOKEN, max_retries=0)
    bias = {str(k): v for k, v in endless_bias().items()}  # no end of answer at any token
    r = client.chat.completions.create(model="hermes", messages=[
        {"role": "user", "content": "hello"}], max_tokens=12, logit_bias=bias)
    assert r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens > 0 and r.choices[0].message.content
    chunks = list(client.chat.completions.create(
        model="hermes", messages=[{"role": "user", "content": "hello"}], max_tokens=12,
        logit_bias=bias, stream=True))
    assert len(chunks) >= 3
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert [m.id for m in client.models.list().data] == ["tiny.gguf"]
    bad = openai.OpenAI(base_url=gw.url + "/v1", api_key="wrong-token-0123456789",
                        max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model="hermes", messages=[
            {"role": "user", "content": "hello"}], max_tokens=4)


def test_policy_disables_hermes_and_the_chain_falls_back_to_remote(gateway, remote_server):
    gw, ctx = gateway(remote=remote_server)
    activate(ctx.db, ctx.cfg, "hermes", 3600, "test")
    status, body, _ = http("POST", gw.url + "/vx11/route", {"query": "tell me a story"})
    assert (status, body.get("route")) == (200, "hermes"), body
    deactivate(ctx.db, "hermes", "test")  # what `vx11ctl deactivate hermes` / POST /vx11/policy do
    status, body, _ = http("POST", gw.url + "/vx11/route", {"query": "tell me a story"})
    assert status == 200, body
    assert body["route"] == "remote" and body["model"] == "remote-tiny"
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=TOKEN, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="remote-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert raw.headers["x-vx11-route"] == "remote"
    assert raw.parse().choices[0].message.role == "assistant"
    stream = list(client.chat.completions.create(
        model="remote-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
        stream=True))
    assert stream
    # Switch still answers without Hermes
    assert http("POST", gw.url + "/vx11/route", {"query": "6*7"})[1]["answer"] == "42"
    metrics = http("GET", gw.url + "/vx11/hermes/metrics")[1]["raw"].decode()
    assert "vx11_hermes_model_loaded 1.0" in metrics


def test_no_route_without_hermes_or_remote(gateway):
    gw, _ = gateway()
    status, body, _ = http("POST", gw.url + "/vx11/route", {"query": "tell me a story"})
    assert (status, body["error"]) == (503, "no_route")
    assert body["tried"] == {"switch": "no_answer", "hermes": "inactive",
                             "remote": "unconfigured"}
    status, body, _ = http("POST", gw.url + "/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "x"}]})
    assert (status, err_code(body)) == (503, "no_route")


def test_hermes_down_falls_through_counted(gateway, tmp_path, remote_server):
    gw, ctx = gateway(remote=remote_server, socket=str(tmp_path / "nobody.sock"))
    activate(ctx.db, ctx.cfg, "hermes", 3600, "test")
    status, body, _ = http("POST", gw.url + "/vx11/route", {"query": "tell me a story"})
    assert (status, body["route"]) == (200, "remote")
    from prometheus_client import generate_latest
    text = generate_latest(ctx.registry).decode()
    assert ('vx11_gateway_route_fallthrough_total{reason="unavailable",step="hermes"} 1.0'
            in text)
    assert 'vx11_gateway_route_answers_total{route="remote"} 1.0' in text


def test_bad_route_input_is_a_clear_4xx(gateway):
    gw, _ = gateway()
    assert http("POST", gw.url + "/vx11/route", {"query": ""})[0] == 422
    assert http("POST", gw.url + "/vx11/route", {"query": 5})[0] == 422
    assert http("POST", gw.url + "/vx11/route", {"query": "1" * 3000})[0] == 413


def test_worker_api_rejects_bad_bodies(worker):
    from tests.hermes_support import unix_request

    for body in (b"not json", b"[]", json.dumps({"messages": []}).encode(),
                 json.dumps({"messages": [{"role": "user", "content": 1}]}).encode(),
                 json.dumps({"messages": [{"role": "user", "content": "x"}],
                             "max_tokens": -1}).encode()):
        status, data = unix_request(worker.socket, "POST", "/v1/chat/completions", body)
        assert status in (400, 422), (body, data)
    assert worker.proc.poll() is None


def test_gateway_stream_cancel_and_queue_full_pass_through(tmp_path, dbpath):
    """A client leaving a stream at the gateway stops generation in Hermes; a full Hermes
    queue is a 503 with Retry-After at the gateway too."""
    import asyncio

    import aiohttp

    from tests.hermes_support import model as make_model

    w = WorkerProc(str(tmp_path / "w"), make_model("medium", str(tmp_path)), n_ctx=512,
                   max_tokens=400, queue_max=0)
    try:
        cfg = config.parse(json.dumps({"db": {"path": dbpath}, "hermes": {
            "socket": w.socket, "model_path": w.model_path}}), "gw.yml")
        ctx = GatewayContext(cfg=cfg, db=Database(dbpath), registry=CollectorRegistry())
        activate(ctx.db, ctx.cfg, "hermes", 3600, "test")
        gw = AppThread(lambda: build_app(ctx, TOKEN, modules=["vx11d.gateway.chain"]))
        url = gw.url + "/v1/chat/completions"
        hdr = {"X-VX11-Token": TOKEN}
        # random weights emit invalid UTF-8 that holds chunks back: bias it away; and no
        # end-of-sequence (token 2), so the first stream surely outlasts the second request
        bias = {str(k): v for k, v in endless_bias().items()}
        body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 400,
                "logit_bias": bias}
        try:
            assert w.chat("warm up", max_tokens=2)[0] == 200

            async def leave_early():
                async with aiohttp.ClientSession() as s:
                    r = await s.post(url, json={**body, "stream": True}, headers=hdr)
                    assert r.status == 200
                    await r.content.readline()
                    r.close()

            asyncio.run(leave_early())
            poll_for(lambda: b'vx11_hermes_requests_total{outcome="cancelled"} 1.0'
                     in w.get("/metrics")[1], 15, what="Hermes counted the cancel")

            async def two_at_once():
                async with aiohttp.ClientSession() as s:
                    first = await s.post(url, json={**body, "stream": True}, headers=hdr)
                    assert first.status == 200
                    await first.content.readline()  # the first request is generating now
                    async with s.post(url, json=body, headers=hdr) as r2:
                        second = (r2.status, r2.headers.get("Retry-After"), await r2.json())
                    first.close()
                    return second

            status, retry, data = asyncio.run(two_at_once())
            assert (status, err_code(data)) == (503, "queue_full") and retry
        finally:
            gw.close()
    finally:
        w.stop()
