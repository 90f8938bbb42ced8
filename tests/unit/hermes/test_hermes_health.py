"""Hermes's /health is a readiness probe like llama-server's: 503 ``loading`` with
Retry-After while the model loads (and ``draining`` before an RSS-guard restart), else
200 — also when the model is not loaded yet, since the first request loads it."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from vx11d.hermes.server import Worker, new_metrics


def _worker(state: str, draining: bool = False) -> Worker:
    engine = SimpleNamespace(state=state, reason="", model_id="m.gguf", parallel=2,
                             last_use=0.0, kv_type="q8_0")
    w = Worker(SimpleNamespace(), engine, new_metrics(CollectorRegistry()), None)
    w.draining = draining
    return w


@pytest.mark.parametrize(("state", "draining", "status", "word"), [
    ("unloaded", False, 200, "ok"), ("loaded", False, 200, "ok"),
    ("loading", False, 503, "loading"), ("loaded", True, 503, "draining"),
    ("refused", False, 200, "ok")])
def test_health_answers_like_llama_server(state, draining, status, word):
    async def go():
        return await _worker(state, draining).health(None)

    resp = asyncio.run(go())
    body = json.loads(resp.body)
    assert (resp.status, body["status"], body["model"]) == (status, word, state)
    assert body["kv_cache_type"] == ("q8_0" if state == "loaded" else "")
    assert ("Retry-After" in resp.headers) == (status == 503)
