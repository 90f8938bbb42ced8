"""Benchmark: an authenticated client's POST /vx11/route, alone and while strangers flood.

    .venv/bin/python bench/gateway_load.py [--quick] [--keep]

Boots a sandbox (a real systemd in systemd-nspawn), starts madre and the socket-activated
gateway on the sandbox config, and runs this file inside it (``--inside``), where
``wrk`` (Debian's HTTP load generator) drives every client, all on loopback:

- alone: one ``wrk`` (ROUTE_CONNS connections) sends ``POST /vx11/route``
  ``{"query": "2+2"}`` with the token (the Switch answers it: no model involved);
- under flood: the same, while one ``wrk`` floods ``GET /health`` without a token
  (FLOOD_CONNS connections) and another sends requests with a wrong token (they get
  401, then 429 once the failure limiter blocks the client).

Both sides share the machine's cores (the gateway is one process on one core), so
the goal is relative: ``route_rps_under_flood >= 0.5 * route_rps_alone`` (issue 15
finding 4: before, 64 tokenless /health connections cut route throughput a
hundredfold, since each /health opened a system-bus connection).

TLS rows (issue 22), each a ratio in the same run, on three gateway processes started
the same way (``vx11d gateway`` on one certificate made for the run): plain on :8001,
TLS on :8443, and Debian's ``nginx`` (one worker) terminating TLS on :9443 in front of
the plain one, what a sysadmin would do instead:

- ``tls_route_ratio_vs_plain``: keep-alive ``POST /vx11/route`` over TLS / plain (>= 0.7);
- ``tls_under_flood_ratio``: the same over TLS while a tokenless ``GET /health`` flood
  comes over TLS too / alone (>= 0.5);
- ``tls_route_ratio_vs_nginx``: keep-alive route over the gateway's TLS / behind nginx
  (>= 0.8);
Rotation row (issue 22): ``wrk`` (bench/rotation.lua) POSTs /vx11/route with credential
A, B is added, the clients move to B, A is revoked: ``rotation_non_2xx_valid`` (answers
not 2xx to a valid credential; goal 0) and ``rotation_refused_after_s`` (A's first 401
after its revocation; goal <= 5).

- ``tls_handshake_ratio_vs_nginx``: new TLS connections per second (the authenticated
  route with ``Connection: close``: one handshake per request; a tokenless /health
  would measure its per-address throttle instead) / nginx's (>= 0.5).

Last line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _sandboxed import main, print_rows, run_inside, start_madre_and_gateway

REPO = Path(__file__).resolve().parents[1]
URL = "http://127.0.0.1:8000"
# Strangers come from another address than the client, as they would on a network
# (the failure limiter blocks by address): ::1, still loopback only.
STRANGER_URL = "http://[::1]:8000"
ROUTE_CONNS = 4
FLOOD_CONNS = 64
BAD_CONNS = 16

ROUTE_LUA = """wrk.method = "POST"
wrk.body = '{"query": "2+2"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-VX11-Token"] = "%s"
"""
BAD_LUA = """wrk.headers["X-VX11-Token"] = "not-the-token"
"""


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]
    return float(m.group(1)) * scale


def parse_wrk(out: str) -> dict[str, float]:
    """Requests/s, p50/p99 latency (ms), requests and non-2xx/3xx count from wrk's report."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out}")
    res = {"rps": float(rps.group(1))}
    for pct, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        res[key] = _seconds(m.group(1)) * 1000 if m else float("nan")
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = float(m.group(1)) if m else 0.0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    res["non_2xx"] = float(m.group(1)) if m else 0.0
    return res


def wrk(url: str, conns: int, seconds: float, script: str | None = None,
        latency: bool = False) -> subprocess.Popen[str]:
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s", "--timeout", "5s"]
    if latency:
        argv.append("--latency")
    if script:
        argv += ["-s", script]
    return subprocess.Popen([*argv, url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(p: subprocess.Popen[str]) -> dict[str, float]:
    out, _ = p.communicate(timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed ({p.returncode}):\n{out}")
    return parse_wrk(out)


# --- TLS rows (inside the sandbox) ---------------------------------------------------

NGINX_CONF = """user root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  upstream gw {{ server 127.0.0.1:8001; keepalive 32; }}
  server {{
    listen 127.0.0.1:9443 ssl;
    ssl_certificate {d}/gw.pem;
    ssl_certificate_key {d}/gw.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://gw;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""
CLOSE_LUA = 'wrk.headers["Connection"] = "close"\n'


def _gateway(d: str, name: str, port: int, metrics_port: int, tls: bool
             ) -> subprocess.Popen[bytes]:
    import yaml

    cfg = yaml.safe_load(Path("/etc/vx11/vx11.yml").read_text()) or {}
    g = cfg.setdefault("gateway", {})
    g.update({"listen_address": "127.0.0.1", "listen_port": port,
              "metrics_port": metrics_port})
    if tls:
        g.update({"tls_cert_file": f"{d}/gw.pem", "tls_key_file": f"{d}/gw.key"})
    path = os.path.join(d, f"{name}.yml")
    Path(path).write_text(yaml.safe_dump(cfg))
    log = open(os.path.join(d, f"{name}.log"), "wb")  # noqa: SIM115 (the child keeps it)
    return subprocess.Popen(["/opt/vx11d/bin/vx11d", "gateway"], stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "VX11_CONFIG": path})


def _wait_port(port: int, seconds: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {seconds:g}s")


def tls_rows(quick: bool, route_lua: str, d: str) -> dict[str, float]:
    """The four TLS ratios, medians of ``rounds`` runs each."""
    # The sandbox's /etc is empty: no openssl.cnf, so a minimal one of our own.
    Path(f"{d}/req.cnf").write_text("[req]\ndistinguished_name = dn\n[dn]\n")
    subprocess.run(["openssl", "req", "-config", f"{d}/req.cnf", "-x509", "-newkey", "ec",
                    "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                    f"{d}/gw.key", "-out", f"{d}/gw.pem", "-days", "2", "-subj",
                    "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    os.chmod(f"{d}/gw.key", 0o600)
    close_lua = os.path.join(d, "close.lua")
    Path(close_lua).write_text(Path(route_lua).read_text() + CLOSE_LUA)
    Path(f"{d}/nginx.conf").write_text(NGINX_CONF.format(d=d))
    procs = [_gateway(d, "plain", 8001, 9721, False), _gateway(d, "tls", 8443, 9722, True)]
    nginx_log = open(f"{d}/nginx.out", "wb")  # noqa: SIM115 (the child keeps it)
    procs.append(subprocess.Popen(["nginx", "-c", f"{d}/nginx.conf", "-p", d, "-e",
                                   f"{d}/nginx-error.log", "-g", "daemon off;"],
                                  stdout=nginx_log, stderr=subprocess.STDOUT))
    seconds, rounds = (3.0, 1) if quick else (10.0, 3)
    plain, tls, nginx = "http://127.0.0.1:8001", "https://127.0.0.1:8443", \
        "https://127.0.0.1:9443"
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in (
        "plain", "tls", "tls_flood", "nginx", "hs_tls", "hs_nginx")}
    try:
        for port, log in ((8001, "plain.log"), (8443, "tls.log"), (9443, "nginx.out")):
            try:
                _wait_port(port)
            except RuntimeError as e:
                raise RuntimeError(f"{e}:\n{Path(d, log).read_text(errors='replace')}") from e
        for url in (plain, tls, nginx):  # warm up
            finish(wrk(f"{url}/vx11/route", 2, 1.0, route_lua))
        for _ in range(rounds):
            runs["plain"].append(finish(wrk(f"{plain}/vx11/route", ROUTE_CONNS, seconds,
                                            route_lua)))
            runs["tls"].append(finish(wrk(f"{tls}/vx11/route", ROUTE_CONNS, seconds,
                                          route_lua)))
            runs["nginx"].append(finish(wrk(f"{nginx}/vx11/route", ROUTE_CONNS, seconds,
                                            route_lua)))
            h = wrk(f"{tls}/health", FLOOD_CONNS,
                    seconds + 2)
            time.sleep(1.0)
            runs["tls_flood"].append(finish(wrk(f"{tls}/vx11/route", ROUTE_CONNS, seconds,
                                                route_lua)))
            finish(h)
            runs["hs_tls"].append(finish(wrk(f"{tls}/vx11/route", ROUTE_CONNS, seconds,
                                             close_lua)))
            runs["hs_nginx"].append(finish(wrk(f"{nginx}/vx11/route", ROUTE_CONNS, seconds,
                                               close_lua)))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def med(k: str) -> float:
        v = sorted(x["rps"] for x in runs[k])
        return v[len(v) // 2]

    res = {f"{k}_rps": med(k) for k in runs}
    res["tls_errors"] = sum(x["non_2xx"] for k in ("plain", "tls", "nginx", "tls_flood")
                            for x in runs[k])
    res["tls_route_ratio_vs_plain"] = med("tls") / max(med("plain"), 1e-9)
    res["tls_under_flood_ratio"] = med("tls_flood") / max(med("tls"), 1e-9)
    res["tls_route_ratio_vs_nginx"] = med("tls") / max(med("nginx"), 1e-9)
    res["tls_handshake_ratio_vs_nginx"] = med("hs_tls") / max(med("hs_nginx"), 1e-9)
    res["tls_goals_met"] = (res["tls_route_ratio_vs_plain"] >= 0.7
                            and res["tls_under_flood_ratio"] >= 0.5
                            and res["tls_route_ratio_vs_nginx"] >= 0.8
                            and res["tls_handshake_ratio_vs_nginx"] >= 0.5)
    return res


# --- rotation (inside the sandbox) ---------------------------------------------------

def rotation_row(d: str) -> dict[str, float]:
    """Credential rotation under wrk load against the socket-activated gateway."""
    from rotation_load import present, result, route_status, start_wrk

    from vx11d import config, credentials
    from vx11d.errors import InputError

    g = config.load("/etc/vx11/vx11.yml").gateway
    for name in ("bench-a", "bench-b"):
        with contextlib.suppress(InputError):  # left by an interrupted run
            credentials.revoke(g.credentials_dir, name, g.token_file)
    a = credentials.add(g.credentials_dir, "bench-a", frozenset({"chat"}), g.token_file)
    current = Path(d, "current")
    present(current, "A", a)
    p = start_wrk(URL, current, 8)
    time.sleep(2)
    b = credentials.add(g.credentials_dir, "bench-b", frozenset({"chat"}), g.token_file)
    present(current, "B", b)
    time.sleep(1.5)
    credentials.revoke(g.credentials_dir, "bench-a", g.token_file)
    t0 = time.monotonic()
    while route_status(URL, a) != 401 and time.monotonic() - t0 < 30:
        time.sleep(0.02)
    refused = time.monotonic() - t0
    out, _ = p.communicate(timeout=60)
    credentials.revoke(g.credentials_dir, "bench-b", g.token_file)
    got = result(out)
    if got is None:
        raise RuntimeError(f"wrk printed no ROTATION line:\n{out}")
    return {"rotation_answers": float(got["answers"]),
            "rotation_non_2xx_valid": float(sum(got["bad"].values())
                                            + got["socket_errors"]),
            "rotation_refused_after_s": refused}


# --- inside the sandbox -------------------------------------------------------------

def inside(quick: bool) -> dict[str, float]:
    token = Path("/etc/vx11/token").read_text().strip()
    d = tempfile.mkdtemp(prefix="gwload-")
    route_lua, bad_lua = os.path.join(d, "route.lua"), os.path.join(d, "bad.lua")
    Path(route_lua).write_text(ROUTE_LUA % token)
    Path(bad_lua).write_text(BAD_LUA)
    seconds = 5.0 if quick else 20.0
    rounds = 1 if quick else 3
    # warm up: socket activation, imports, the Switch's first decision
    finish(wrk(f"{URL}/vx11/route", 2, 1.0, route_lua))
    alone, flood, health, bad = [], [], [], []
    for _ in range(rounds):
        alone.append(finish(wrk(f"{URL}/vx11/route", ROUTE_CONNS, seconds, route_lua,
                                latency=True)))
        h = wrk(f"{STRANGER_URL}/health", FLOOD_CONNS, seconds + 2)
        b = wrk(f"{STRANGER_URL}/vx11/hijas", BAD_CONNS, seconds + 2, bad_lua)
        time.sleep(1.0)  # the flood is at full rate before the measured client starts
        flood.append(finish(wrk(f"{URL}/vx11/route", ROUTE_CONNS, seconds, route_lua,
                                latency=True)))
        health.append(finish(h))
        bad.append(finish(b))

    def med(xs: list[dict[str, float]], k: str) -> float:
        v = sorted(x[k] for x in xs)
        return v[len(v) // 2]

    res = {
        "route_rps_alone": med(alone, "rps"),
        "route_p99_ms_alone": med(alone, "p99_ms"),
        "route_rps_under_flood": med(flood, "rps"),
        "route_p50_ms_under_flood": med(flood, "p50_ms"),
        "route_p99_ms_under_flood": med(flood, "p99_ms"),
        "route_errors": sum(x["non_2xx"] for x in alone + flood),
        "health_flood_rps": med(health, "rps"),
        "bad_token_rps": med(bad, "rps"),
        "flood_connections": FLOOD_CONNS + BAD_CONNS,
        "seconds_per_run": seconds,
        "rounds": rounds,
    }
    res["under_flood_ratio"] = res["route_rps_under_flood"] / max(res["route_rps_alone"], 1e-9)
    res["goal_met"] = res["under_flood_ratio"] >= 0.5
    res.update(tls_rows(quick, route_lua, d))
    res.update(rotation_row(d))
    return res


# --- on the host --------------------------------------------------------------------

def host(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    from vx11d.ctl.sandbox import Sandbox

    sb = Sandbox(os.environ.get("VX11_SANDBOX") or f"vx11bench-{os.getpid()}")
    t0 = time.monotonic()
    sb.up()
    try:
        start_madre_and_gateway(sb, REPO, "restart")
        res = run_inside(sb, str(Path(__file__).resolve()), args.quick, 900)
        if res is None:
            return 1
    finally:
        if not args.keep:
            sb.down()
    res["total_s"] = round(time.monotonic() - t0, 1)
    rows = [("POST /vx11/route alone (req/s, p99 ms)",
             f"{res['route_rps_alone']:.0f}, {res['route_p99_ms_alone']:.1f}"),
            (f"... under a flood of {res['flood_connections']} stranger connections "
             "(req/s, p50/p99 ms)",
             f"{res['route_rps_under_flood']:.0f}, {res['route_p50_ms_under_flood']:.1f}"
             f"/{res['route_p99_ms_under_flood']:.1f}"),
            ("ratio under flood / alone (goal >= 0.5)", f"{res['under_flood_ratio']:.2f}"),
            ("flood: GET /health without token / wrong-token requests (req/s)",
             f"{res['health_flood_rps']:.0f} / {res['bad_token_rps']:.0f}"),
            ("route errors (non-2xx)", f"{res['route_errors']:.0f}"),
            ("TLS route keep-alive / plain (req/s; goal ratio >= 0.7)",
             f"{res['tls_rps']:.0f} / {res['plain_rps']:.0f} = "
             f"{res['tls_route_ratio_vs_plain']:.2f}"),
            ("TLS route under a TLS /health flood / alone (goal >= 0.5)",
             f"{res['tls_flood_rps']:.0f} / {res['tls_rps']:.0f} = "
             f"{res['tls_under_flood_ratio']:.2f}"),
            ("TLS route: gateway / plain gateway behind nginx TLS (goal >= 0.8)",
             f"{res['tls_rps']:.0f} / {res['nginx_rps']:.0f} = "
             f"{res['tls_route_ratio_vs_nginx']:.2f}"),
            ("new TLS connections/s: gateway / nginx (goal >= 0.5)",
             f"{res['hs_tls_rps']:.0f} / {res['hs_nginx_rps']:.0f} = "
             f"{res['tls_handshake_ratio_vs_nginx']:.2f}"),
            ("TLS route errors (non-2xx)", f"{res['tls_errors']:.0f}"),
            ("rotation A -> B under wrk: non-2xx to a valid credential (goal 0)",
             f"{res['rotation_non_2xx_valid']:.0f} of {res['rotation_answers']:.0f}"),
            ("... A refused after its revocation (s; goal <= 5)",
             f"{res['rotation_refused_after_s']:.2f}"),
            ("total time (s)", f"{res['total_s']}")]
    print_rows(rows)
    for k, v in list(res.items()):
        if isinstance(v, float):
            res[k] = round(v, 3)
    print(json.dumps(res, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(__doc__, inside, host, quick_help="one 5 s round per side (< 60 s)"))
