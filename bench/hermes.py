"""Hermes bench: the gateway → UNIX socket → worker path vs llama-cpp-python in-process.

Same generated model, prompt and settings, interleaved runs, medians:
- tokens/s (non-streaming, from the usage counts) and first-token latency (streaming,
  time to the first chunk with text) through the gateway app on loopback, proxied to
  the real worker (``vx11d hermes``, a child process) on its UNIX socket;
- the same calls on a ``Llama`` in this process;
- Switch decision latency (p50/p99 over many decisions);
- the damaged-GGUF corpus served to a live worker (refusals, worker crashes);
- the worker's RSS after the idle unload.

    python bench/hermes.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vx11d import config
from vx11d.db import Database
from vx11d.gateway.app import build_app
from vx11d.gateway.context import GatewayContext
from vx11d.hermes.testmodel import BENCH_SHAPE, high_byte_bias, write_corpus, write_model
from vx11d.switch import Switch, SwitchRefused

TOKEN = "bench-token-0123456789abcdef"
PROMPT = [{"role": "user", "content": "Tell me about the vx11 hermes switch."}]
THREADS = 1  # 2 cores shared with other jobs: one thread is far less noisy
# No bytes >= 0x80 (chunks flow as generated) and no end-of-sequence token: every run
# generates exactly max_tokens on both paths.
BIAS = {**high_byte_bias(), 2: -100.0}


def worker_config(tmp: str, model: str, **extra) -> str:
    path = os.path.join(tmp, "hermes.yml")
    h = {"socket": os.path.join(tmp, "run", "hermes.sock"), "model_path": model,
         "metrics_port": 0, "n_ctx": 512, "n_threads": THREADS, "max_tokens": 4096,
         "request_timeout": 300, **extra}
    with open(path + ".tmp", "w") as f:
        json.dump({"db": {"path": os.path.join(tmp, "vx11.db")}, "hermes": h}, f)
    os.replace(path + ".tmp", path)
    return path


def start_worker(tmp: str, model: str, **extra) -> tuple[subprocess.Popen, str]:
    os.makedirs(os.path.join(tmp, "run"), exist_ok=True)
    cfg = worker_config(tmp, model, **extra)
    env = {**os.environ, "VX11_CONFIG": cfg}
    env.pop("NOTIFY_SOCKET", None)
    proc = subprocess.Popen([sys.executable, "-m", "vx11d", "hermes"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sock = os.path.join(tmp, "run", "hermes.sock")
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("worker did not start")
        time.sleep(0.05)
    return proc, sock


async def unix_get(sock: str, path: str) -> dict:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as s, \
            s.get("http://h" + path) as r:
        return await r.json()


class Gateway:
    """The gateway app (chain module) on loopback in a background loop."""

    def __init__(self, tmp: str, sock: str, model: str):
        dbpath = os.path.join(tmp, "gw.db")
        db = Database(dbpath, migrate=True)
        now = time.time()
        db.write(lambda c: c.execute("INSERT INTO activations (component, created_at, "
                                     "expires_at) VALUES ('hermes', ?, ?)", (now, now + 3600)))
        cfg = config.parse(json.dumps({"db": {"path": dbpath}, "gateway": {
            "request_timeout": 300}, "hermes": {"socket": sock, "model_path": model}}), "b")
        self.ctx = GatewayContext(cfg=cfg, db=db, registry=CollectorRegistry())
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)

            async def start():
                self.runner = web.AppRunner(build_app(self.ctx, TOKEN,
                                                      modules=["vx11d.gateway.chain"]))
                await self.runner.setup()
                site = web.TCPSite(self.runner, "127.0.0.1", 0)
                await site.start()
                self.port = site._server.sockets[0].getsockname()[1]

            self.loop.run_until_complete(start())
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(15)
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def close(self):
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def body(tokens: int, stream: bool) -> dict:
    return {"messages": PROMPT, "max_tokens": tokens, "temperature": 0.0, "seed": 1,
            "stream": stream, "logit_bias": {str(k): v for k, v in BIAS.items()}}


async def gw_throughput(session, url: str, tokens: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    async with session.post(url, json=body(tokens, False),
                            headers={"X-VX11-Token": TOKEN}) as r:
        data = await r.json()
        assert r.status == 200, data
    took = time.perf_counter() - t0
    n = data["usage"]["completion_tokens"]
    assert n == tokens, data["usage"]
    return n / took, n


async def gw_first_token(session, url: str, tokens: int) -> float:
    t0 = time.perf_counter()
    first = None
    async with session.post(url, json=body(tokens, True),
                            headers={"X-VX11-Token": TOKEN}) as r:
        assert r.status == 200
        async for line in r.content:
            if first is None and line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - t0
    return first if first is not None else float("nan")


def ip_kwargs(tokens: int) -> dict:
    return {"messages": PROMPT, "max_tokens": tokens, "temperature": 0.0, "seed": 1,
            "logit_bias": BIAS}


def ip_throughput(llm, tokens: int) -> tuple[float, int]:
    """Streaming in-process too (the worker streams internally; llama-cpp-python's
    non-streaming path re-detokenizes the whole completion every token and is slower)."""
    t0 = time.perf_counter()
    for _chunk in llm.create_chat_completion(**ip_kwargs(tokens), stream=True):
        pass
    took = time.perf_counter() - t0
    return tokens / took, tokens  # EOS is suppressed: always exactly max_tokens


def ip_first_token(llm, tokens: int) -> float:
    t0 = time.perf_counter()
    first = None
    for chunk in llm.create_chat_completion(**ip_kwargs(tokens), stream=True):
        if first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            first = time.perf_counter() - t0
    return first if first is not None else float("nan")


def switch_latency(n: int) -> tuple[float, float, float]:
    sw = Switch(config.parse("switch:\n  rules:\n    - {name: hi, exact: hello, answer: hi}\n"
                             "    - {name: st, pattern: 'status of (\\\\w+)', answer: '{1} ok'}\n",
                             "b").switch)
    queries = ["2+2", "what is 3*7?", "hello", "status of madre", "tell me a story",
               "sqrt(2)*(3+4)/5", "factorial(20)"]
    times = []
    for i in range(n):
        q = queries[i % len(queries)]
        t0 = time.perf_counter()
        sw.decide(q)
        times.append(time.perf_counter() - t0)
    bombs = []
    for b in ("9**9**9", "10**10**10", "factorial(100000)", "(" * 100 + "1" + ")" * 100):
        t0 = time.perf_counter()
        with contextlib.suppress(SwitchRefused):
            sw.decide(b)
        bombs.append(time.perf_counter() - t0)
    times.sort()
    return (times[len(times) // 2] * 1000, times[int(len(times) * 0.99)] * 1000,
            max(bombs) * 1000)


def corpus_run(tmp: str) -> tuple[int, int, int]:
    cdir = os.path.join(tmp, "corpus")
    good = write_model(os.path.join(tmp, "tiny.gguf"))
    paths = write_corpus(cdir)
    target = os.path.join(tmp, "served.gguf")
    shutil.copy(good, target)
    wdir = os.path.join(tmp, "cw")
    proc, sock = start_worker(wdir, target, n_ctx=256)
    refused = crashes = 0

    async def one() -> int:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as s, \
                s.post("http://h/v1/chat/completions", json={
                    "messages": PROMPT, "max_tokens": 2}) as r:
            return r.status

    try:
        for p in paths:
            os.replace(shutil.copy(p, target + ".new"), target)
            try:
                status = asyncio.run(one())
            except aiohttp.ClientError:
                status = 0
            refused += status == 503
            if proc.poll() is not None:
                crashes += 1
                proc, sock = start_worker(wdir, target, n_ctx=256)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    return len(paths), refused, crashes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs (< 60 s)")
    a = ap.parse_args()
    runs, tokens, ft_tokens = (3, 48, 8) if a.quick else (11, 128, 16)
    t_start = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="vx11-bench-hermes-")
    try:
        model = write_model(os.path.join(tmp, "bench.gguf"), BENCH_SHAPE)
        model_mb = os.path.getsize(model) / 1e6
        from llama_cpp import Llama
        llm = Llama(model_path=model, n_ctx=512, n_threads=THREADS, chat_format="chatml",
                    verbose=False)
        wdir = os.path.join(tmp, "w")
        proc, sock = start_worker(wdir, model)
        gw = Gateway(tmp, sock, model)
        gw_tps, ip_tps, gw_ft, ip_ft = [], [], [], []

        async def gw_session(fn, *args):
            async with aiohttp.ClientSession() as s:
                return await fn(s, gw.url, *args)

        asyncio.run(gw_session(gw_throughput, 4))  # load the model in the worker
        ip_throughput(llm, 4)  # and warm the in-process one
        for _ in range(runs):  # interleaved
            gw_tps.append(asyncio.run(gw_session(gw_throughput, tokens))[0])
            ip_tps.append(ip_throughput(llm, tokens)[0])
            gw_ft.append(asyncio.run(gw_session(gw_first_token, ft_tokens)))
            ip_ft.append(ip_first_token(llm, ft_tokens))
        llm.close()
        del llm
        gw.close()
        # idle unload: a reload with idle_unload=1 s, then wait for the unload
        loaded_rss = asyncio.run(unix_get(sock, "/health"))["rss_bytes"]
        worker_config(wdir, model, idle_unload=1)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        h = asyncio.run(unix_get(sock, "/health"))
        while h["model"] != "unloaded" and time.monotonic() < deadline:
            time.sleep(0.2)
            h = asyncio.run(unix_get(sock, "/health"))
        idle_rss = h["rss_bytes"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        sw_p50, sw_p99, bomb_max = switch_latency(5000 if a.quick else 50000)
        cases, refused, crashes = corpus_run(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median
    r = {
        "model_mb": round(model_mb, 1),
        "ms_per_token_inprocess": round(1000 / med(ip_tps), 2),
        "tokens_per_s_gateway": round(med(gw_tps), 1),
        "tokens_per_s_inprocess": round(med(ip_tps), 1),
        "tokens_per_s_ratio_vs_inprocess": round(med(gw_tps) / med(ip_tps), 3),
        "first_token_ms_gateway": round(med(gw_ft) * 1000, 2),
        "first_token_ms_inprocess": round(med(ip_ft) * 1000, 2),
        "first_token_overhead_ms": round((med(gw_ft) - med(ip_ft)) * 1000, 2),
        "switch_p50_ms": round(sw_p50, 4),
        "switch_p99_ms": round(sw_p99, 4),
        "switch_bomb_max_ms": round(bomb_max, 3),
        "gguf_corpus_cases": cases,
        "gguf_corpus_refused": refused,
        "gguf_corpus_worker_crashes": crashes,
        "rss_mb_loaded": round(loaded_rss / 2**20, 1),
        "idle_rss_mb_after_unload": round(idle_rss / 2**20, 1),
        "runs": runs, "tokens_per_run": tokens, "threads": THREADS,
        "seconds": round(time.monotonic() - t_start, 1),
    }
    print(f"model {r['model_mb']} MB ({BENCH_SHAPE}), {runs} interleaved runs of "
          f"{tokens} tokens, {THREADS} threads")
    print(f"{'':28}{'gateway':>12}{'in-process':>12}{'ratio/diff':>12}")
    print(f"{'tokens/s (median)':28}{r['tokens_per_s_gateway']:>12}"
          f"{r['tokens_per_s_inprocess']:>12}{r['tokens_per_s_ratio_vs_inprocess']:>12}")
    print(f"{'first token ms (median)':28}{r['first_token_ms_gateway']:>12}"
          f"{r['first_token_ms_inprocess']:>12}{r['first_token_overhead_ms']:>12}")
    print(f"ms/token in-process {r['ms_per_token_inprocess']}; Switch p50 {sw_p50:.4f} ms, "
          f"p99 {sw_p99:.4f} ms, slowest bomb {bomb_max:.3f} ms")
    print(f"GGUF corpus: {cases} cases, {refused} refused, {crashes} worker crashes; RSS "
          f"loaded {r['rss_mb_loaded']} MiB, after idle unload {r['idle_rss_mb_after_unload']}"
          " MiB")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
