"""Benchmark: each daemon's /metrics (series, size, scrape time) with 10 and 1,000 hijas.

    .venv/bin/python bench/scrape.py [--quick]

Boots a sandbox (a real systemd in systemd-nspawn), starts the set (vx11.target) and
Debian's prometheus-node-exporter (as user prometheus, textfile collector on the
rotator's vx11_rotate.prom), and runs this same file inside it (``--inside``), so every
scrape is a loopback HTTP GET from inside the container, as a local Prometheus would
make it: a new connection per scrape, the whole body read.

Two phases: 10 hijas in the registry (real spawns of the sandbox's ``echo`` template,
each GET by id through the gateway), then 1,000 (990 more rows as madre records ended
hijas, 100 of them GET by id). Per daemon (gateway :9711, madre :9712, reaper :9713, and
Hermes through the gateway's relay with the token, on a tiny generated model):
series (sample lines) and bytes in each phase, and the scrape time p50/p99 in the 1,000
phase; beside node_exporter's own /metrics on the same host (the peer every Prometheus
already scrapes). Goals: ``series_1000 == series_10`` and each daemon's p99 <= node's.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path

from _sandboxed import main, run_in, set_up_node_exporter

REPO = Path(__file__).resolve().parents[1]
PORTS = {"gateway": 9711, "madre": 9712, "reaper": 9713, "node_exporter": 9100}
HERMES = "http://127.0.0.1:8000/vx11/hermes/metrics"  # the relay Prometheus scrapes
MODEL = "/var/lib/vx11/models/random-weights-tiny.gguf"  # only the relay is scraped
ENDPOINTS = [*PORTS, "hermes"]


def _scrape(name: str, token: str) -> tuple[float, bytes]:
    if name == "hermes":
        req = urllib.request.Request(HERMES, headers={"Authorization": f"Bearer {token}"})
    else:
        req = urllib.request.Request(f"http://127.0.0.1:{PORTS[name]}/metrics")
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    return (time.perf_counter() - t0) * 1000, body


def _series(body: bytes) -> int:
    return sum(1 for ln in body.decode().splitlines() if ln and not ln.startswith("#"))


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def measure(n: int, token: str) -> dict:
    """Scrape every endpoint n times, interleaved (one of each per round)."""
    times: dict[str, list[float]] = {k: [] for k in ENDPOINTS}
    last: dict[str, bytes] = {}
    for _ in range(n):
        for name in ENDPOINTS:
            ms, body = _scrape(name, token)
            times[name].append(ms)
            last[name] = body
    return {name: {"series": _series(last[name]), "bytes": len(last[name]),
                   "p50_ms": round(statistics.median(times[name]), 2),
                   "p99_ms": round(_pct(times[name], 0.99), 2)} for name in ENDPOINTS}


def _gateway_get(path: str, token: str) -> None:
    req = urllib.request.Request(f"http://127.0.0.1:8000{path}",
                                 headers={"X-VX11-Token": token})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()
    except urllib.error.HTTPError as e:  # 404 for an unknown id is part of the traffic
        e.read()


def inside(quick: bool) -> dict:
    """Runs in the container: both phases, returns the figures."""
    import sqlite3
    import subprocess

    token = Path("/etc/vx11/token").read_text().strip()
    ids = []
    for _ in range(10):
        out = subprocess.run(["vx11ctl", "hijas", "spawn", "echo", "--ttl", "5s", "--json"],
                             capture_output=True, text=True, check=False).stdout
        ids.append(json.loads(out)["id"])
    for hid in [*ids, "nosuchhija"]:
        _gateway_get(f"/vx11/hijas/{hid}", token)
    _gateway_get("/vx11/hijas", token)
    n = 40 if quick else 300
    ten = measure(n, token)
    conn = sqlite3.connect("/var/lib/vx11/vx11.db")
    t = time.time()
    conn.executemany(
        "INSERT INTO spawner_hijas (id, template, ttl_s, unit, status, created_at, "
        "started_at, ended_at, exit_status, result) VALUES "
        "(?, 'echo', 5, ?, 'exited', ?, ?, ?, 0, 'success')",
        [(f"bench{i:04d}", f"vx11-hija-bench{i:04d}.service", t, t, t + 1)
         for i in range(990)])
    conn.commit()
    conn.close()
    for i in range(0, 990, 10):
        _gateway_get(f"/vx11/hijas/bench{i:04d}", token)
    _gateway_get("/vx11/hijas", token)
    thousand = measure(n, token)
    return {"ten": ten, "thousand": thousand, "samples": n}


def host(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    from vx11d.ctl.sandbox import Sandbox

    sb = Sandbox(f"vx11b-scrape-{os.getpid()}", die_with_caller=True)
    try:
        sb.up(timeout=180)

        run = functools.partial(run_in, sb)
        set_up_node_exporter(sb)
        run("systemctl", "start", "vx11.target", "prometheus-node-exporter.service")
        run("systemctl", "start", "vx11-rotate.service")
        # Hermes on a tiny generated model, inside an activation window (madre starts it)
        run("sh", "-c", f"/opt/vx11d/bin/python -m vx11d.hermes.testmodel {MODEL} && "
            f"chgrp vx11 {MODEL} && chmod 0640 {MODEL}")
        run("vx11ctl", "activate", "hermes", "--for", "30m")
        token = sb.token()
        deadline = time.monotonic() + 90
        while sb.exec(["curl", "-sf", "-o", "/dev/null", "-H", f"Authorization: Bearer {token}",
                       HERMES], timeout=20).returncode:
            if time.monotonic() > deadline:
                raise SystemExit("the Hermes relay does not answer")
            time.sleep(0.5)
        for port in PORTS.values():
            deadline = time.monotonic() + 60
            while sb.exec(["curl", "-sf", "-o", "/dev/null",
                           f"http://127.0.0.1:{port}/metrics"], timeout=20).returncode:
                if time.monotonic() > deadline:
                    raise SystemExit(f"nothing answers on :{port}")
                time.sleep(0.5)
        out = run("/opt/vx11d/bin/python", str(Path(__file__).resolve()), "--inside",
                  *(["--quick"] if args.quick else []))
        res = json.loads(out.strip().splitlines()[-1])
    finally:
        sb.down()
    ten, thousand = res["ten"], res["thousand"]
    print(f"{'endpoint':<14}{'series@10':>10}{'series@1000':>12}{'bytes@1000':>11}"
          f"{'p50 ms':>8}{'p99 ms':>8}   ({res['samples']} scrapes each, interleaved)")
    for name in ENDPOINTS:
        a, b = ten[name], thousand[name]
        print(f"{name:<14}{a['series']:>10}{b['series']:>12}{b['bytes']:>11}"
              f"{b['p50_ms']:>8}{b['p99_ms']:>8}")
    summary: dict[str, object] = {
        d: {"series_10": ten[d]["series"], "series_1000": thousand[d]["series"],
            "bytes_1000": thousand[d]["bytes"], "scrape_ms_p50": thousand[d]["p50_ms"],
            "scrape_ms_p99": thousand[d]["p99_ms"]}
        for d in ENDPOINTS if d != "node_exporter"}
    summary["node_exporter_scrape_ms_p99"] = thousand["node_exporter"]["p99_ms"]
    summary["node_exporter_series"] = thousand["node_exporter"]["series"]
    summary["quick"] = args.quick
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(__doc__, inside, host, keep=False))
