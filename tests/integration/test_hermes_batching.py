"""Continuous batching on the real default model (SmolLM2-135M-Instruct Q4_1): requests
decoded together give, token for token, the answers they get alone (temperature 0);
requests joining while others generate change nothing; cancelling one leaves the others
intact. One worker with four sequences for the module."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.hermes_support import WorkerProc, running_worker
from vx11d.ctl.modelfetch import DEFAULT

PROMPTS = ["What is the capital of France? Answer in one word.", "What is 17 times 3?",
           "Write a haiku about the sea.", "Name three colours.",
           "Describe a lighthouse keeper's morning.", "List the planets of the solar system."]


@pytest.fixture(scope="module")
def worker(tmp_path_factory, real_model):
    with running_worker(str(tmp_path_factory.mktemp("hermes-batch")), real_model,
                        model_sha256=DEFAULT.sha256, n_ctx=4096, n_threads=2,
                        max_tokens=256, parallel=4, queue_max=8) as w:
        yield w


@pytest.fixture(scope="module")
def worker_f16(tmp_path_factory, real_model):
    """An f16 KV cache: llama.cpp picks the attention kernel by the decode's shape."""
    with running_worker(str(tmp_path_factory.mktemp("hermes-batch-f16")), real_model,
                        model_sha256=DEFAULT.sha256, n_ctx=4096, n_threads=2,
                        max_tokens=256, parallel=4, queue_max=8, kv_cache_type="f16") as w:
        yield w


def _metrics(w: WorkerProc) -> dict[str, float]:
    out = {}
    for line in w.get("/metrics")[1].decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def _ask(s: aiohttp.ClientSession, prompt: str, max_tokens: int = 48,
               stream: bool = False, close_after: int = 0, system: str = ""
               ) -> tuple[str, int | None]:
    """(text, completion tokens); with ``close_after``, go away after that many chunks."""
    msgs = [{"role": "system", "content": system}] if system else []
    body = {"messages": [*msgs, {"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": max_tokens, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    async with s.post("http://h/v1/chat/completions", json=body) as r:
        assert r.status == 200, await r.text()
        if not stream:
            data = await r.json()
            return data["choices"][0]["message"]["content"], \
                data["usage"]["completion_tokens"]
        text, used, n = "", None, 0
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                used = chunk["usage"]["completion_tokens"]
            for c in chunk.get("choices", []):
                if c["delta"].get("content"):
                    text += c["delta"]["content"]
                    n += 1
            if close_after and n >= close_after:
                return text, None  # the context manager closes the connection
        return text, used


def _session(w: WorkerProc) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=w.socket),
                                 timeout=aiohttp.ClientTimeout(total=120))


def test_four_concurrent_answers_equal_each_alone_token_for_token(worker):
    async def go():
        async with _session(worker) as s:
            alone = [await _ask(s, p) for p in PROMPTS[:4]]
            before = _metrics(worker)
            together = await asyncio.gather(*(_ask(s, p) for p in PROMPTS[:4]))
            return alone, together, before

    alone, together, before = asyncio.run(go())
    assert together == alone
    after = _metrics(worker)
    def several(m):  # decode steps that carried two sequences or more
        return m["vx11_hermes_batch_sequences_count"] - \
            m['vx11_hermes_batch_sequences_bucket{le="1.0"}']

    assert several(before) == 0  # alone: one sequence a step
    assert several(after) > 20  # together: decoded in the same steps, not one by one
    assert after["vx11_hermes_requests_total{outcome=\"ok\"}"] >= 8


def test_requests_joining_mid_generation_and_a_cancelled_one_change_nothing(worker):
    """Staggered streams (each joins while the others generate), one of them closed after
    a few chunks: the others' answers are their answers alone, token for token."""
    prompts = PROMPTS[2:6]

    async def go():
        async with _session(worker) as s:
            alone = [await _ask(s, p, max_tokens=64, stream=True) for p in prompts]
            before = _metrics(worker)['vx11_hermes_requests_total{outcome="cancelled"}']
            tasks = []
            for i, p in enumerate(prompts):
                tasks.append(asyncio.ensure_future(_ask(
                    s, p, max_tokens=64, stream=True, close_after=3 if i == 1 else 0)))
                await asyncio.sleep(0.15)  # the next one joins mid-generation
            together = await asyncio.gather(*tasks)
            return alone, together, before

    alone, together, before = asyncio.run(go())
    for i, (a, t) in enumerate(zip(alone, together, strict=True)):
        if i == 1:
            assert t[1] is None and a[0].startswith(t[0])  # went away after 3 chunks
        else:
            assert t == a, (prompts[i], a, t)
    from tests.support import poll_for

    poll_for(lambda: _metrics(worker)['vx11_hermes_requests_total{outcome="cancelled"}']
             == before + 1, 10, what="the closed stream counted as cancelled")
    assert worker.health()["running"] == 0


def test_llama_server_style_metrics_pass_promtool_and_add_up(worker):
    import subprocess

    status, body = worker.get("/metrics")
    assert status == 200
    r = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    assert r.returncode == 0, r.stdout + r.stderr
    m = _metrics(worker)
    assert m["vx11_hermes_prompt_tokens_total"] > 0 and m["vx11_hermes_prompt_seconds_total"] > 0
    assert m["vx11_hermes_generated_tokens_total"] > 0
    assert m["vx11_hermes_generated_seconds_total"] > 0
    assert m["vx11_hermes_prompt_cached_tokens_total"] > 0  # the same prompts came again
    assert m["vx11_hermes_parallel_sequences"] == 4
    assert m["vx11_hermes_kv_cache_cells"] == 4096
    assert 0 < m["vx11_hermes_kv_cache_used_cells"] <= 4096
    assert m["vx11_hermes_requests_running"] == 0 and m["vx11_hermes_queue_depth"] == 0


@pytest.mark.parametrize("kv", ["q8_0 (default)", "f16"])
def test_a_long_conversation_alone_and_with_another_joining_gives_the_same_tokens(
        kv, request):
    """Past 256 tokens a lone sequence would switch llama.cpp to its split-KV attention
    kernel with an f16 KV cache, and back when another joins: the pad row keeps it on
    one kernel. A q8_0 cache has one kernel for every decode and needs no pad. Either
    way the answers are the same token for token."""
    worker = request.getfixturevalue("worker_f16" if kv == "f16" else "worker")
    system = " ".join(f"Rule {i}: keep unit {i} bounded, observable and restartable."
                      for i in range(1, 26))  # ~300 tokens
    qs = ["Which rule is about unit 7?", "Summarise the rules in one sentence."]

    async def go():
        async with _session(worker) as s:
            alone = [await _ask(s, q, max_tokens=96, system=system) for q in qs]
            first = asyncio.ensure_future(_ask(s, qs[0], max_tokens=96, system=system))
            await asyncio.sleep(0.3)  # the second joins while the first generates
            second = await _ask(s, qs[1], max_tokens=96, system=system)
            return alone, [await first, second]

    alone, together = asyncio.run(go())
    assert together == alone
