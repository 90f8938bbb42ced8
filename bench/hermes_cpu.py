"""Hermes vs llama.cpp's ``llama-server``: CPU time and context switches per generated
token, a measure a busy machine does not distort the way it does tokens/s.

The same workloads against each peer in turn (the real gateway + worker, as in
``bench/hermes.py``; ``llama-server`` with ``-np`` = Hermes's ``parallel``), same model,
threads and context, temperature 0, end-of-generation suppressed (every answer is exactly
``max_tokens``):

- ``one``: one client, non-streaming, several requests one after the other;
- ``four``: 4 clients at once, non-streaming;
- ``four_stream``: 4 clients at once, streaming (one SSE chunk per token).

For each, from ``/proc/PID/task/*/schedstat`` and ``status`` before and after: CPU ms
per generated token and context switches per token (voluntary: the thread slept and had
to be woken; involuntary: it was preempted), for the whole peer (gateway + worker for
Hermes) and per thread group: the worker's asyncio loop (its main thread), its engine
thread (``hermes-engine``, the lowest-numbered of that name) and llama.cpp's OpenMP
compute threads (the others of that name: a thread inherits its creator's name), the
gateway; llama-server's main thread (its decode loop) and the rest. On 2 cores every extra
runnable thread per token preempts a compute thread, so wake-ups count as much as CPU.

Then, in this process, the worker's engine alone (no HTTP): the engine thread's CPU
time per step outside ``llama_decode`` (``time.thread_time`` around each step and each
decode: CPU, not wall, so other processes do not count), of which sampling, and the
decodes per token, for one request and for 4 at once (``engine_*`` keys).

    python bench/hermes_cpu.py [--quick] [--tokens N] [--rounds N]

The last line is one JSON object: ``cpu_ms_per_token_<workload>_hermes`` /
``_llama_cpp_server``, ``cpu_ratio_<workload>`` (Hermes / llama-server; <= 1.0 is the
goal), ``switches_per_token_<workload>_*``, and the per-thread split under ``threads``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import hermes as hb

from vx11d.ctl.modelfetch import DEFAULT, default_cache, fetch

WORKLOADS = ("one", "four", "four_stream")


def tasks(pid: int) -> dict[int, dict]:
    """Every thread of ``pid``: name, CPU ns, times run, context switches."""
    out = {}
    base = f"/proc/{pid}/task"
    for tid in os.listdir(base):
        try:
            with open(f"{base}/{tid}/schedstat") as f:
                run_ns, _wait, slices = (int(x) for x in f.read().split())
            with open(f"{base}/{tid}/status") as f:
                st = dict(line.split(":", 1) for line in f if ":" in line)
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue  # the thread ended meanwhile
        out[int(tid)] = {"name": st["Name"].strip(), "cpu_ns": run_ns, "slices": slices,
                         "vol": int(st["voluntary_ctxt_switches"]),
                         "invol": int(st["nonvoluntary_ctxt_switches"])}
    return out


def delta(before: dict[int, dict], after: dict[int, dict]) -> dict[int, dict]:
    d = {}
    for tid, a in after.items():
        b = before.get(tid, {"cpu_ns": 0, "slices": 0, "vol": 0, "invol": 0})
        d[tid] = {"name": a["name"], **{k: a[k] - b[k] for k in
                                        ("cpu_ns", "slices", "vol", "invol")}}
    return d


def group_hermes(pid: int, d: dict[int, dict]) -> dict[str, list[int]]:
    engine = sorted(t for t, v in d.items() if v["name"] == "hermes-engine")
    g = {"loop": [pid], "engine": engine[:1], "compute": engine[1:]}
    g["other"] = [t for t in d if t not in g["loop"] + engine]
    return g


def group_llama(pid: int, d: dict[int, dict]) -> dict[str, list[int]]:
    return {"main": [pid], "other": [t for t in d if t != pid]}


def summarize(d: dict[int, dict], tids: list[int], tokens: int) -> dict:
    cpu = sum(d[t]["cpu_ns"] for t in tids if t in d)
    vol = sum(d[t]["vol"] for t in tids if t in d)
    invol = sum(d[t]["invol"] for t in tids if t in d)
    return {"cpu_ms_per_token": round(cpu / 1e6 / tokens, 3),
            "vol_per_token": round(vol / tokens, 2),
            "invol_per_token": round(invol / tokens, 2)}


async def request(s: aiohttp.ClientSession, peer: dict, msgs: list, tokens: int,
                  stream: bool) -> tuple[int, int]:
    """(completion tokens, prompt tokens) of one request. llama-server closes a
    keep-alive connection after a few requests, and the client may have picked it just
    then: such a request never reached it and is sent again, once."""
    try:
        return await request_once(s, peer, msgs, tokens, stream)
    except aiohttp.ServerDisconnectedError:
        return await request_once(s, peer, msgs, tokens, stream)


async def request_once(s: aiohttp.ClientSession, peer: dict, msgs: list, tokens: int,
                       stream: bool) -> tuple[int, int]:
    body = hb.chat(msgs, tokens, stream, peer["model"])
    if stream:
        body["stream_options"] = {"include_usage": True}
    async with s.post(peer["url"], json=body, headers=peer["headers"]) as r:
        assert r.status == 200, await r.text()
        if not stream:
            u = (await r.json())["usage"]
            return u["completion_tokens"], u["prompt_tokens"]
        u = None
        async for line in r.content:
            if line.startswith(b"data: {"):
                chunk = json.loads(line[6:])
                u = chunk.get("usage") or u
        assert u is not None, peer["name"]
        return u["completion_tokens"], u["prompt_tokens"]


async def workload(peer: dict, kind: str, tokens: int, rounds: int) -> tuple[int, int]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as s:
        n = p = 0
        for r in range(rounds):
            if kind == "one":
                got = [await request(s, peer, hb.client_messages(r), tokens, False)]
            else:
                got = await asyncio.gather(*(request(s, peer, hb.client_messages(i), tokens,
                                                     kind == "four_stream")
                                             for i in range(4)))
            for c, q in got:
                assert c == tokens, (peer["name"], c)
                n += c
                p += q
    return n, p


async def decodes(peer: dict) -> float:
    """llama_decode calls so far: the worker's ``vx11_hermes_batch_sequences`` count
    (one observation a decode), llama-server's ``llamacpp:n_decode_total``."""
    if "sock" in peer:
        text = await hb.unix_text(peer["sock"], "/metrics")
        key = "vx11_hermes_batch_sequences_count"
    else:
        async with aiohttp.ClientSession() as s, \
                s.get(peer["metrics"], headers=peer["headers"]) as r:
            text = await r.text()
        key = "llamacpp:n_decode_total"
    for line in text.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[1])
    raise SystemExit(f"{key} not in {peer['name']}'s metrics")


def measure(peer: dict, pids: dict[str, int], kind: str, tokens: int, rounds: int
            ) -> dict:
    d0 = asyncio.run(decodes(peer))
    before = {name: tasks(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    try:
        n, p = asyncio.run(workload(peer, kind, tokens, rounds))
    except aiohttp.ClientError as e:
        raise SystemExit(f"{peer['name']}, {kind}: {type(e).__name__}: {e}") from e
    wall = time.monotonic() - t0
    after = {name: tasks(pid) for name, pid in pids.items()}
    out: dict = {"tokens": n, "prompt_tokens": p, "wall_s": round(wall, 2), "threads": {},
                 "decodes_per_token": round((asyncio.run(decodes(peer)) - d0) / n, 3)}
    cpu = vol = invol = 0
    for name, pid in pids.items():
        d = delta(before[name], after[name])
        groups = {"worker": group_hermes, "gateway": lambda pid, d: {"all": list(d)},
                  "llama_cpp_server": group_llama}[name](pid, d)
        for g, tids in groups.items():
            out["threads"][f"{name}.{g}"] = summarize(d, tids, n)
        cpu += sum(v["cpu_ns"] for v in d.values())
        vol += sum(v["vol"] for v in d.values())
        invol += sum(v["invol"] for v in d.values())
    out["cpu_ms_per_token"] = round(cpu / 1e6 / n, 3)
    out["switches_per_token"] = round((vol + invol) / n, 2)
    out["vol_per_token"] = round(vol / n, 2)
    out["invol_per_token"] = round(invol / n, 2)
    return out


def engine_profile(model: str, tokens: int, rounds: int) -> dict:
    """The engine thread's own CPU per step, outside llama_decode and in sampling."""
    import threading

    from prometheus_client import CollectorRegistry

    from vx11d import config
    from vx11d.hermes.engine import Engine
    from vx11d.hermes.server import new_metrics

    cfg = config.HermesConfig()
    for k, v in {"model_path": model, "model_sha256": "", "n_ctx": hb.N_CTX,
                 "n_threads": hb.THREADS, "parallel": hb.PARALLEL}.items():
        object.__setattr__(cfg, k, v)
    eng = Engine(cfg, new_metrics(CollectorRegistry()))
    acc: dict[str, float] = {}

    def add(key: str, v: float) -> None:
        acc[key] = acc.get(key, 0.0) + v

    async def run() -> dict:
        await eng.ensure_loaded()
        b = eng.batcher
        lib = b.L

        mark = [0.0]  # thread_time when the engine thread last came back to Python

        class Timed:  # the batcher's llama_cpp, with two calls timed
            def __getattr__(self, name):
                return getattr(lib, name)

            def llama_decode(self, ctx, batch):
                add("outside", time.thread_time() - mark[0])
                add("decodes", 1)
                try:
                    return lib.llama_decode(ctx, batch)
                finally:
                    mark[0] = time.thread_time()

            def llama_sampler_sample(self, *a):
                t = time.thread_time()
                try:
                    return lib.llama_sampler_sample(*a)
                finally:
                    add("sample", time.thread_time() - t)

        step = b._step

        def timed_step() -> None:  # from its start to its first decode, its last to its end
            mark[0] = time.thread_time()
            try:
                step()
            finally:
                add("outside", time.thread_time() - mark[0])
                add("steps", 1)

        b.L, b._step = Timed(), timed_step
        out = {}
        for clients in (1, 4):
            acc.clear()
            n = 0
            for _ in range(rounds):
                async def one(i: int) -> int:
                    p = await eng.prepare(hb.ip_kwargs(hb.client_messages(i), tokens))
                    got = await eng.generate(p, threading.Event(), lambda t: None,
                                             on_loop=False)
                    return got["completion_tokens"]
                n += sum(await asyncio.gather(*(one(i) for i in range(clients))))
            name = "one" if clients == 1 else "four"
            outside = acc["outside"]
            out[f"engine_python_us_per_step_{name}"] = round(
                (outside - acc.get("sample", 0)) / acc["steps"] * 1e6, 1)
            out[f"engine_sampling_us_per_step_{name}"] = round(
                acc.get("sample", 0) / acc["steps"] * 1e6, 1)
            out[f"engine_outside_decode_us_per_token_{name}"] = round(outside / n * 1e6, 1)
            out[f"engine_decodes_per_token_{name}"] = round(acc["decodes"] / n, 3)
        return out

    try:
        return asyncio.run(run())
    finally:
        eng.shutdown()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens (< 60 s)")
    ap.add_argument("--tokens", type=int, default=0, help="max_tokens per request")
    ap.add_argument("--rounds", type=int, default=0, help="requests (or 4-client rounds)")
    ap.add_argument("--only", choices=("hermes", "llama_cpp_server"), default=None)
    a = ap.parse_args()
    tokens = a.tokens or (48 if a.quick else 128)
    rounds = a.rounds or (2 if a.quick else 4)
    t_start = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="vx11-bench-hermes-cpu-")
    procs = []
    gw = None
    res: dict[str, dict] = {}
    try:
        model = fetch(DEFAULT, os.path.join(tmp, "models"), default_cache()).path
        peers = []
        if a.only in (None, "hermes"):
            proc, sock = hb.start_worker(os.path.join(tmp, "w"), model)
            procs.append(proc)
            gw = hb.Gateway(tmp, sock, model)
            peers.append(({"name": "hermes", "model": "hermes", "url": gw.url,
                           "headers": {"X-VX11-Token": hb.TOKEN}, "sock": sock},
                          {"worker": proc.pid, "gateway": gw.proc.pid}))
        if a.only in (None, "llama_cpp_server"):
            cpp, cpeer = hb.start_llama_cpp_server(hb.find_llama_cpp_server(), model, tmp)
            procs.append(cpp)
            peers.append((cpeer, {"llama_cpp_server": cpp.pid}))
        for peer, _ in peers:  # load, warm
            asyncio.run(workload(peer, "four", 4, 1))
        for kind in WORKLOADS:
            for peer, pids in peers:
                name = "hermes" if "worker" in pids else "llama_cpp_server"
                res[f"{kind}.{name}"] = measure(peer, pids, kind, tokens, rounds)
        if a.only is None:
            res["engine"] = engine_profile(model, tokens, rounds)
    finally:
        if gw is not None:
            gw.close()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except Exception:
                    p.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    r: dict = {"model": DEFAULT.filename, "threads": hb.THREADS, "parallel": hb.PARALLEL,
               "tokens_per_request": tokens, "rounds": rounds,
               "load_avg_1m": round(os.getloadavg()[0], 2)}
    print(f"{'per generated token: CPU, vol+invol switches, decodes':52}{'hermes':>24}"
          f"{'llama-server':>24}")
    for kind in WORKLOADS:
        h, c = res.get(f"{kind}.hermes"), res.get(f"{kind}.llama_cpp_server")
        for key, v in (("hermes", h), ("llama_cpp_server", c)):
            if v is not None:
                r[f"cpu_ms_per_token_{kind}_{key}"] = v["cpu_ms_per_token"]
                r[f"switches_per_token_{kind}_{key}"] = v["switches_per_token"]
                r[f"decodes_per_token_{kind}_{key}"] = v["decodes_per_token"]
                r[f"prompt_tokens_{kind}_{key}"] = v["prompt_tokens"]
        if h and c:
            r[f"cpu_ratio_{kind}"] = round(h["cpu_ms_per_token"] / c["cpu_ms_per_token"], 3)

        def cell(v):
            return "-" if v is None else (f"{v['cpu_ms_per_token']:.2f} ms "
                                          f"{v['vol_per_token']:.1f}+{v['invol_per_token']:.1f} "
                                          f"{v['decodes_per_token']:.2f}")
        print(f"{kind:52}{cell(h):>24}{cell(c):>24}")
    print("per thread group (CPU ms, voluntary+involuntary switches per token):")
    threads = {}
    for key, v in res.items():
        for g, s in v.get("threads", {}).items():
            threads[f"{key}.{g}"] = s
            print(f"  {key + '.' + g:44}{s['cpu_ms_per_token']:>9.3f} ms "
                  f"{s['vol_per_token']:>7.2f}+{s['invol_per_token']:.2f}")
    r["threads"] = threads
    eng = res.get("engine", {})
    if eng:
        print("engine thread alone (CPU us): "
              + ", ".join(f"{k.removeprefix('engine_')} {v}" for k, v in eng.items()))
        r.update(eng)
    r["seconds"] = round(time.monotonic() - t_start, 1)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
