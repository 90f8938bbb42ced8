"""``vx11ctl hijas list|spawn|stop``, ``activate``/``deactivate``, ``smoke``.

Spawn/stop requests and activation windows are written straight to the DB (with the
same validation the gateway uses, from the core ``vx11d.hijas``) and madre is woken
with a datagram: that works as root on the host even when the gateway is down or
not yet socket-activated, and needs no token. ``smoke`` goes through HTTP on purpose:
it checks the gateway as a client sees it (token read from the token file).
"""

from __future__ import annotations

import argparse
import functools
import json
import ssl
import time
import urllib.error
import urllib.request
from typing import Any

from .. import config, hijas, textfmt
from ..confload import format_size as size
from ..confload import parse_duration
from ..db import Database
from ..errors import InputError
from ..hijas import LIVE, HijaStatus
from . import gwclient
from .main import emit
from .state import open_db


def register(sub: argparse._SubParsersAction) -> None:
    h = sub.add_parser("hijas", help="list, spawn and stop hijas")
    hs = h.add_subparsers(dest="hijas_cmd", metavar="ACTION", required=True)
    ls = hs.add_parser("list", help="hijas, newest first")
    ls.add_argument("--status", default=None,
                    help="only hijas in this state: live, running, expired, ...")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    sp = hs.add_parser("spawn", help="spawn a hija from a template, with a TTL")
    sp.add_argument("template", help="a template name from madre.templates")
    sp.add_argument("--ttl", default=None,
                    help="time to live, e.g. 30s, 5m (default: the template's default_ttl, "
                         "at most its max_ttl)")
    sp.add_argument("--arg", action="append", default=[], metavar="NAME=VALUE",
                    help="a template argument (repeat for several)")
    sp.add_argument("--wait", type=float, default=10.0, help="seconds to wait for running")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_spawn)
    st = hs.add_parser("stop", help="ask madre to stop a live hija")
    st.add_argument("id", help="the hija's id (see vx11ctl hijas list)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_stop)

    a = sub.add_parser("activate", help="open an activation window (TTL required)")
    a.add_argument("component", choices=hijas.COMPONENTS, help="what to activate")
    a.add_argument("--for", dest="duration", required=True, help="e.g. 30m, 2h")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_activate)
    d = sub.add_parser("deactivate", help="end a component's activation windows now")
    d.add_argument("component", choices=hijas.COMPONENTS, help="what to deactivate")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_deactivate)

    s = sub.add_parser("smoke", help="health, 401 sweep, a short-TTL spawn that expires")
    s.add_argument("--url", default=None, help="gateway URL (default: the local gateway, "
                   "https when it has TLS)")
    s.add_argument("--cacert", default=None, help="CA file to trust for an https --url")
    s.add_argument("--template", default="sleeper",
                   help="the template the test spawn uses (default sleeper)")
    s.add_argument("--ttl", type=float, default=2.0,
                   help="the test spawn's TTL in seconds (default 2)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_smoke)


def _db(args: argparse.Namespace, write: bool = True) -> tuple[config.Config, Database]:
    """The config and its existing database (never created or migrated here)."""
    cfg = config.load(args.config)
    return cfg, open_db(cfg, write=write)


LIST_HEADER = f"{'ID':<10}  {'TEMPLATE':<10} {'STATUS':<9} {'PORT':<6} {'WHEN':<17} WHY"


def _fmt_row(r: dict[str, Any]) -> str:
    """One hija: id, template, status, port, when it expires or ended, why it ended."""
    now = time.time()
    when = ""
    if r["status"] == HijaStatus.RUNNING and r.get("expires_at"):
        when = f"expires {textfmt.relative(max(now, r['expires_at']), now)}"
    elif r.get("ended_at"):
        when = f"ended {textfmt.relative(min(now, r['ended_at']), now)}"
    port = str(r["port"]) if r.get("port") else "-"
    why = r.get("reason") or ""
    if r["status"] == HijaStatus.OOM:
        why = (f"killed for memory: peak {size(r.get('memory_peak'))} of "
               f"{size(r.get('memory_max'))}")
    return f"{r['id']:<10}  {r['template']:<10} {r['status']:<9} {port:<6} {when:<17} " \
           f"{why}".rstrip()


def _seconds(flag: str, text: str) -> float:
    """A duration flag (``30s``, ``2h``) in seconds; InputError naming the flag."""
    try:
        return float(parse_duration(text))
    except ValueError as e:
        raise InputError(f"{flag}: {e}") from e


def cmd_list(args: argparse.Namespace) -> int:
    _cfg, db = _db(args, write=False)
    rows = hijas.listing(db, args.status, args.limit)
    emit(args, rows, "\n".join([LIST_HEADER, *map(_fmt_row, rows)]) if rows else "no hijas")
    return 0


def cmd_spawn(args: argparse.Namespace) -> int:
    cfg, db = _db(args)
    ttl = None if args.ttl is None else _seconds("--ttl", args.ttl)
    given: dict[str, str] = {}
    for item in args.arg:
        name, sep, value = item.partition("=")
        if not sep:
            raise InputError(f"--arg {item!r}: expected NAME=VALUE")
        given[name] = value
    row = hijas.request_spawn(db, cfg, args.template, ttl, given, requested_by="vx11ctl")
    hijas.wake_madre(cfg.gateway.madre_wake_socket)
    deadline = time.monotonic() + args.wait
    while row["status"] in (HijaStatus.REQUESTED, HijaStatus.STARTING) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
        row = hijas.get(db, row["id"])
    emit(args, row, _fmt_row(row))
    return 0 if row["status"] in (HijaStatus.RUNNING, HijaStatus.EXITED,
                                   HijaStatus.EXPIRED) else 1


def cmd_stop(args: argparse.Namespace) -> int:
    cfg, db = _db(args)
    row = hijas.request_stop(db, args.id, requested_by="vx11ctl")
    hijas.wake_madre(cfg.gateway.madre_wake_socket)
    emit(args, row, f"stop requested for {row['id']} ({row['status']})")
    return 0


def cmd_activate(args: argparse.Namespace) -> int:
    cfg, db = _db(args)
    seconds = _seconds("--for", args.duration)
    row = hijas.activate(db, cfg, args.component, seconds, requested_by="vx11ctl")
    hijas.wake_madre(cfg.gateway.madre_wake_socket)
    emit(args, row, f"{args.component} activated for {textfmt.duration(seconds)} "
         f"(window {row['id']}, until {textfmt.iso(row.get('expires_at'))})")
    return 0


def cmd_deactivate(args: argparse.Namespace) -> int:
    cfg, db = _db(args)
    n = hijas.deactivate(db, args.component, requested_by="vx11ctl")
    hijas.wake_madre(cfg.gateway.madre_wake_socket)
    emit(args, {"component": args.component, "windows_ended": n},
         f"{args.component}: {n} window(s) ended")
    return 0


# --- smoke ---------------------------------------------------------------------------

PROBE_HEADER = "X-VX11-Probe"  # vx11d.gateway.app.PROBE_HEADER


def _http(method: str, url: str, token: str | None = None, body: Any = None,
          timeout: float = 15.0, ctx: ssl.SSLContext | None = None,
          probe: str | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token is not None:
        req.add_header("X-VX11-Token", token)
    if probe is not None:  # a request that must be refused, marked as the operator's
        req.add_header(PROBE_HEADER, probe)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as r:  # noqa: S310
            raw, code = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, code = e.read(), e.code
    try:
        return code, json.loads(raw or b"null")
    except ValueError:
        return code, raw.decode(errors="replace")


def sweep_paths(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, path) for every documented non-health operation, plus unknown paths."""
    out = []
    for path, ops in doc.get("paths", {}).items():
        for method in ops:
            if path == "/health" and method == "get":
                continue
            out.append((method.upper(), path.replace("{id}", "abcdefghij")))
    out += [("GET", "/nope"), ("POST", "/vx11/nope"), ("GET", "/health/x"),
            ("DELETE", "/health"), ("GET", "/../etc/passwd")]
    return out


def cmd_smoke(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    base, ctx = gwclient.endpoint(cfg.gateway, args.url, args.cacert)
    http = functools.partial(_http, ctx=ctx)
    token = open(cfg.gateway.token_file).read().strip()  # noqa: SIM115
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: Any = "") -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})

    code, body = http("GET", f"{base}/health")
    check("health is open and ok", code == 200 and body.get("status") == "ok", code)
    code, doc = http("GET", f"{base}/openapi.json", token)
    check("openapi.json with token", code == 200 and isinstance(doc, dict), code)
    bad = []
    paths = sweep_paths(doc if isinstance(doc, dict) else {})
    for method, path in paths:
        c, _ = http(method, f"{base}{path}", None, {} if method in ("POST", "PUT") else None,
                    probe=token)
        if c != 401:
            bad.append(f"{method} {path} -> {c}")
    check(f"401 without token on {len(paths)} paths", not bad, bad)
    code, row = http("POST", f"{base}/vx11/spawn", token,
                      {"template": args.template, "ttl_s": args.ttl})
    check("spawn answers 201 running",
          code == 201 and row.get("status") == HijaStatus.RUNNING,
          {"code": code, "status": row.get("status") if isinstance(row, dict) else row})
    if code in (201, 202) and isinstance(row, dict):
        deadline = time.monotonic() + args.ttl + 10
        status = row.get("status")
        while status in LIVE and time.monotonic() < deadline:
            time.sleep(0.2)
            _c, row = http("GET", f"{base}/vx11/hijas/{row['id']}", token)
            status = row.get("status")
        err = (row.get("ended_at") or 0) - (row.get("expires_at") or 0)
        check("hija expired on time", status == HijaStatus.EXPIRED and abs(err) < 2.0,
              {"id": row.get("id"), "status": status, "stop_minus_expiry_s": round(err, 3)})
    ok = all(c["ok"] for c in checks)
    text = "\n".join(f"{'ok ' if c['ok'] else 'FAIL'} {c['check']}"
                     + ("" if c["ok"] else f": {c['detail']}") for c in checks)
    emit(args, {"ok": ok, "checks": checks}, text + f"\nsmoke {'passed' if ok else 'FAILED'}")
    return 0 if ok else 1
