"""``vx11ctl route QUERY``: ask Switch in-process, or the whole chain through the gateway."""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request

from .. import config
from ..errors import Vx11Error
from ..switch import Switch, SwitchRefused
from . import gwclient
from .main import emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("route", help="answer a query: Switch in-process, or the full chain "
                       "(Switch → Hermes → remote) with --via-gateway")
    p.add_argument("query", help="the question, e.g. \"2+2\"")
    p.add_argument("--via-gateway", action="store_true",
                   help="POST /vx11/route on the gateway (token from gateway.token_file)")
    p.add_argument("--url", help="gateway base URL (default: the local gateway, https when "
                   "it has TLS)")
    p.add_argument("--cacert", help="CA file to trust for an https gateway")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=route)


def _token(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        raise Vx11Error(f"cannot read the gateway token {path}: {e.strerror}") from e


def route(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    if args.via_gateway:
        g = cfg.gateway
        base, ctx = gwclient.endpoint(g, args.url, args.cacert)
        url = base + "/vx11/route"
        payload = json.dumps({"query": args.query}).encode()
        req = urllib.request.Request(url, data=payload,  # noqa: S310 - http(s) only
                                     headers={"Content-Type": "application/json",
                                              "X-VX11-Token": _token(g.token_file)})
        try:
            with urllib.request.urlopen(req, timeout=g.request_timeout + 5,  # noqa: S310
                                        context=ctx) as resp:
                data = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            data = json.loads(e.read() or b"{}")
            emit(args, data, f"no answer ({e.code}): {data.get('message', '')}")
            return 1
        except (urllib.error.URLError, OSError) as e:
            raise Vx11Error(f"gateway at {url} does not answer: {e}") from e
        model = f", model {data['model']}" if data.get("model") else ""
        emit(args, data, f"{data['answer']}\n(route {data['route']}{model}, "
             f"{data['latency_ms']:.2f} ms)")
        return 0
    t0 = time.perf_counter()
    try:
        d = Switch(cfg.switch).decide(args.query)
    except SwitchRefused as e:
        emit(args, {"route": "switch", "error": "switch_refused", "message": str(e)},
             f"refused: {e}")
        return 1
    ms = (time.perf_counter() - t0) * 1000
    if d is None:
        emit(args, {"route": None, "latency_ms": ms, "message": "Switch has no rule for this; "
                    "use --via-gateway for Hermes and the remote API"},
             "Switch has no answer (try --via-gateway for Hermes / remote)")
        return 1
    emit(args, {"route": "switch", "answer": d.answer, "rule": d.rule, "latency_ms": ms},
         f"{d.answer}\n(route switch, rule {d.rule}, {ms:.3f} ms)")
    return 0
