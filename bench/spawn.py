"""Benchmark: hija spawn latency vs bare systemd-run, sustained spawns/s, TTL accuracy, 401 sweep.

    .venv/bin/python bench/spawn.py [--quick] [--keep]

Boots a sandbox (a real systemd in systemd-nspawn), starts madre and the gateway on the
sandbox config, and runs this same file inside it (``--inside``), so every HTTP client
runs in the container. Definitions:

- spawn latency (our clock): from sending ``POST /vx11/spawn`` on a warm keep-alive
  connection to having read its 201 response. It covers the HTTP request, the gateway's
  validation and ``requested`` row, the wake datagram, madre's ``starting`` row,
  StartTransientUnit, the property read-back, systemd starting the unit until it is
  active, madre's ``running`` row and its settle notice to the gateway, and the
  response. Hijas are ``Type=exec``, so "active" means the hija's main process has
  been exec'd (it runs its command), which is when madre records ``running``.
- systemd-run baseline (its clock): wall time of one ``systemd-run --collect
  --property=Type=exec --property=RuntimeMaxSec=<same TTL> <the template's command>``
  process, interleaved with the API spawns in the same run. The command is the bench
  template's own ``command`` read from the sandbox config, so both sides exec the same
  thing. systemd-run returns when the start job is done (for Type=exec: after the
  exec), so its clock covers starting the systemd-run process, connecting to the bus,
  StartTransientUnit and waiting for the job; ``systemctl_call_p50_ms`` (one
  ``systemctl show -p Version`` process: process start, bus connect, one call) shows
  how much of it is the client process itself, which madre (a long-lived bus
  connection) does not pay.
- the same properties: ``systemd-run`` with every property madre sets for the bench
  template (derived from ``unit_properties()``: static ``User=``, no new privileges,
  no capabilities, limits, slice, environment...): the like-for-like systemd cost.
  ``dynamic``: the same with ``DynamicUser=yes`` instead of the static user (what a
  ``dynamic_user: true`` template pays); ``strict``: plus madre's ``sandboxing: strict``
  (PrivateTmp, ProtectSystem, ...), to show what that hardening costs inside systemd.
- two loops: the goal figures (``p50_ms`` against ``systemd_run_p50_ms``, and the
  same-properties peer) interleave API spawn, bare systemd-run and same-properties
  systemd-run, in an order that alternates every iteration. The DynamicUser and strict
  references run in a second loop of their own, with an API spawn and a bare
  systemd-run measured again beside them (``busy_*``, again in alternating order):
  those units' mount-namespace set-up and teardown keep systemd busy for tens of ms
  and land in the middle of whatever is measured next.
- systemd-run ceiling: the same burst size of ``systemd-run`` (bare, and with the
  basic sandboxing) from as many concurrent callers, per second: what systemd itself
  sustains on this machine in the same run.
- spawns/s: a burst of spawns from concurrent keep-alive clients, divided by the wall
  time until every one was answered 201 running.
- TTL stop error: for the burst's hijas, systemd's InactiveEnterTimestamp (recorded by
  madre from the unit's PropertiesChanged signal as ``ended_at``) minus ``expires_at``
  (ActiveEnterTimestamp + TTL).
- limits: the sandbox delegates the memory, pids and cpu controllers, so every unit
  (madre's and systemd-run's) runs with its limits enforced and accounted;
  ``limits_enforced`` is what the sandbox measured (a probe unit's limits reached the
  kernel), read after the run, not assumed.
- OOM detection: hijas of the ``hog`` template allocate 200 MB under memory_max 32M;
  ``oom_detect_s_p50`` is from systemd noticing the kill (its journal line "Main
  process exited, code=killed, status=9/KILL" for the unit) to the ``hija_oom_killed``
  event row madre commits (which says ``oom``).
- 401 sweep: every method+path in /openapi.json (fetched with the token) plus unknown
  paths, sent without a token; counts the 401 answers.

Last line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import errno
import http.client
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from _sandboxed import main, print_rows, run_inside, start_madre_and_gateway

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = "sleeper"
STRICT_EXTRA = ["PrivateTmp=yes", "PrivateDevices=yes", "ProtectSystem=strict",
                "ProtectHome=yes", "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
                "ProtectKernelLogs=yes", "ProtectHostname=yes", "ProtectControlGroups=yes"]
LEVELS: dict[str, list[str]] = {"bare": []}  # filled in by setup_levels() inside
COMMAND: list[str] = ["/usr/bin/sleep", "infinity"]


def as_assignments(props: dict) -> list[str]:
    """madre's D-Bus unit properties as systemd-run ``-p`` assignments (the ones the
    hija templates use; Type, TTL and CollectMode are given to every level)."""
    out = []
    for k, v in props.items():
        v = v.decode() if isinstance(v, bytes) else v
        # ExecStopPostEx: madre's memory probe runs when a hija stops, not when it starts
        if k in ("Type", "ExecStart", "RuntimeMaxUSec", "CollectMode", "Description",
                 "ExecStopPostEx"):
            continue
        if isinstance(v, bool):
            out.append(f"{k}={'yes' if v else 'no'}")
        elif k == "CapabilityBoundingSet":
            out.append("CapabilityBoundingSet=" if v == 0 else f"{k}={v}")
        elif k == "CPUQuotaPerSecUSec":
            out.append(f"CPUQuota={v // 10_000}%")
        elif k == "TimeoutStopUSec":
            out.append(f"TimeoutStopSec={v}us")
        elif k == "Environment":
            out += [f"Environment={e.decode() if isinstance(e, bytes) else e}" for e in v]
        elif isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], bool):
            names = " ".join(_text(x) for x in v[1])  # (allow list?, names): filters
            out.append(f"{k}={'' if v[0] else '~'}{names}")
        elif isinstance(v, list):
            out.append(f"{k}={' '.join(_text(x) for x in v)}")
        elif k == "RestrictNamespaces":
            out.append("RestrictNamespaces=yes" if v == 0 else f"{k}={v}")
        elif k == "SystemCallErrorNumber":
            out.append(f"{k}={errno.errorcode.get(v, v)}")
        elif k == "UMask":
            out.append(f"UMask={v:04o}")
        else:
            out.append(f"{k}={v}")
    return out


def _text(x: object) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def setup_levels() -> None:
    """The baselines from the sandbox's own config: the bench template's command and
    every property madre gives its hijas."""
    global COMMAND
    sys.path.insert(0, str(REPO))
    from vx11d import config
    from vx11d.madre.registry import unit_properties

    cfg = config.load("/etc/vx11/vx11.yml")
    tpl = cfg.madre.templates[TEMPLATE]
    COMMAND = list(tpl.command)
    props = unit_properties(cfg, tpl, "benchbench0", COMMAND, 4.0, None)
    same = as_assignments(props)
    dyn = [a for a in same if not a.startswith("User=")] + ["DynamicUser=yes"]
    if "DynamicUser=yes" in same:  # the template is dynamic already
        dyn = same
    LEVELS.update(basic=same, dynamic=dyn, strict=[*same, *STRICT_EXTRA])


def systemctl_call() -> float:
    t0 = time.perf_counter()
    subprocess.run(["systemctl", "show", "-p", "Version", "--value"], check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
    return s[k]


# --- inside the sandbox -----------------------------------------------------------------

class Client:
    def __init__(self, token: str | None) -> None:
        self.token = token
        self.conn = http.client.HTTPConnection("127.0.0.1", 8000, timeout=30)

    def call(self, method: str, path: str, body=None, token: bool = True):
        headers = {"Content-Type": "application/json"}
        if token and self.token:
            headers["X-VX11-Token"] = self.token
        data = None if body is None else json.dumps(body)
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                raw = r.read()
                break
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", 8000, timeout=30)
                if attempt:
                    raise
        try:
            return r.status, json.loads(raw)
        except ValueError:
            return r.status, raw


def systemd_run(i: int, ttl: float, level: str) -> float:
    props = ["Type=exec", f"RuntimeMaxSec={ttl:g}", *LEVELS[level]]
    argv = ["systemd-run", "--quiet", "--collect", f"--unit=vx11-bench-{os.getpid()}-"
            f"{level}{i}"]
    for p in props:
        argv += ["-p", p]
    argv += COMMAND
    t0 = time.perf_counter()
    subprocess.run(argv, check=True)
    return time.perf_counter() - t0


def oom_detect(c: Client, n: int) -> dict:
    """Spawn ``n`` hogs one after the other; for each, the time from systemd seeing the
    kernel's kill to madre's ``oom`` row (its event's timestamp)."""
    hijas = []
    for i in range(n):
        status, body = c.call("POST", "/vx11/spawn", {"template": "hog", "ttl_s": 30,
                                                       "args": {"mb": 200}})
        if status not in (201, 202):
            raise SystemExit(f"hog spawn {i}: {status} {body}")
        hijas.append((body["id"], body["unit"]))
    deadline = time.monotonic() + 60
    ended: dict[str, float] = {}
    while time.monotonic() < deadline and len(ended) < n:
        db = sqlite3.connect("file:/var/lib/vx11/vx11.db?mode=ro", uri=True)
        for hid, _unit in hijas:
            row = db.execute("SELECT ts FROM events WHERE subject = ? AND event = "
                             "'hija_oom_killed'", (hid,)).fetchone()
            if row:
                ended[hid] = row[0]
        db.close()
        time.sleep(0.2)
    lat = []
    for hid, unit in hijas:
        if hid not in ended:
            continue
        r = subprocess.run(["journalctl", "-o", "json", "--no-pager", f"UNIT={unit}"],
                           capture_output=True, text=True, check=False)
        for line in r.stdout.splitlines():
            e = json.loads(line)
            if "Main process exited" in str(e.get("MESSAGE")):
                lat.append(ended[hid] - int(e["__REALTIME_TIMESTAMP"]) / 1e6)
                break
    return {"oom_spawned": n, "oom_recorded": len(ended), "oom_timed": len(lat),
            "oom_detect_s_p50": statistics.median(lat) if lat else float("nan"),
            "oom_detect_s_max": max(lat) if lat else float("nan")}


def inside(quick: bool) -> dict:
    token = Path("/etc/vx11/token").read_text().strip()
    setup_levels()
    n_lat = 20 if quick else 100
    n_burst = 100 if quick else 400
    conc = 16
    ttl_lat, ttl_burst = 4.0, 3.0
    out: dict = {"quick": quick}

    c = Client(token)
    c.call("GET", "/vx11/hijas?limit=1")  # warm the connection and the gateway
    def api_spawn(i: int) -> float:
        t0 = time.perf_counter()
        status, body = c.call("POST", "/vx11/spawn", {"template": TEMPLATE, "ttl_s": ttl_lat})
        dt = time.perf_counter() - t0
        if status != 201 or body.get("status") != "running":
            raise SystemExit(f"spawn {i}: {status} {body}")
        return dt

    # 1. the goal pair (and the same-properties peer), alternating under the same load
    api, bare, basic = [], [], []
    for i in range(n_lat):  # the order alternates: neither side always goes first
        for step in (("api", "bare", "basic") if i % 2 == 0 else ("bare", "basic", "api")):
            if step == "api":
                api.append(api_spawn(i))
            else:
                (bare if step == "bare" else basic).append(systemd_run(i, ttl_lat, step))
    out.update(n_latency=n_lat, p50_ms=statistics.median(api) * 1e3, p99_ms=pct(api, 99) * 1e3,
               systemd_run_p50_ms=statistics.median(bare) * 1e3,
               systemd_run_basic_p50_ms=statistics.median(basic) * 1e3,
               command=" ".join(COMMAND))
    out["p50_ratio_vs_systemd_run"] = out["p50_ms"] / out["systemd_run_p50_ms"]
    out["p50_ratio_vs_systemd_run_basic"] = out["p50_ms"] / out["systemd_run_basic_p50_ms"]

    # 2. the costly references (DynamicUser, strict sandboxing: mount namespaces) in a
    # loop of their own, with the API and bare systemd-run measured again beside them:
    # their units' set-up and teardown keep systemd busy and land in the middle of
    # whatever is measured next, so they would blur the goal pair above.
    time.sleep(ttl_lat + 1)
    n_ref = max(10, n_lat // 2)
    api2, bare2, dyn, hard, ctl = [], [], [], [], []
    for i in range(n_ref):
        if i % 2 == 0:
            api2.append(api_spawn(i))
            bare2.append(systemd_run(1000 + i, ttl_lat, "bare"))
        else:
            bare2.append(systemd_run(1000 + i, ttl_lat, "bare"))
            api2.append(api_spawn(i))
        dyn.append(systemd_run(i, ttl_lat, "dynamic"))
        hard.append(systemd_run(i, ttl_lat, "strict"))
        ctl.append(systemctl_call())
    out.update(n_busy=n_ref, busy_p50_ms=statistics.median(api2) * 1e3,
               busy_systemd_run_p50_ms=statistics.median(bare2) * 1e3,
               systemd_run_dynamic_p50_ms=statistics.median(dyn) * 1e3,
               systemd_run_strict_p50_ms=statistics.median(hard) * 1e3,
               systemctl_call_p50_ms=statistics.median(ctl) * 1e3)
    out["busy_p50_ratio_vs_systemd_run"] = out["busy_p50_ms"] / out["busy_systemd_run_p50_ms"]
    out["p50_ratio_vs_systemd_run_dynamic"] = (out["busy_p50_ms"]
                                               / out["systemd_run_dynamic_p50_ms"])
    out["p50_ratio_vs_systemd_run_strict"] = out["busy_p50_ms"] / out["systemd_run_strict_p50_ms"]

    # wait for the latency hijas to go, so the burst has the machine to itself
    time.sleep(ttl_lat + 1)
    results: list[tuple[int, dict]] = []
    lock = threading.Lock()
    per = [n_burst // conc + (1 if i < n_burst % conc else 0) for i in range(conc)]

    def worker(k: int) -> None:
        cl = Client(token)
        for _ in range(per[k]):
            st, b = cl.call("POST", "/vx11/spawn", {"template": TEMPLATE, "ttl_s": ttl_burst})
            with lock:
                results.append((st, b))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(conc)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [b for st, b in results if st == 201 and b.get("status") == "running"]
    out.update(burst=n_burst, burst_concurrency=conc, burst_ok=len(ok),
               spawns_per_s=len(ok) / wall)

    time.sleep(ttl_burst + 1)
    from concurrent.futures import ThreadPoolExecutor

    for level in ("bare", "basic"):
        time.sleep(ttl_burst + 1)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(conc) as ex:
            list(ex.map(lambda i, lv=level: systemd_run(10_000 + i, ttl_burst, lv),
                        range(n_burst)))
        key = "systemd_run_per_s" if level == "bare" else "systemd_run_basic_per_s"
        out[key] = n_burst / (time.perf_counter() - t0)

    ids = [b["id"] for b in ok]
    deadline = time.monotonic() + ttl_burst + 30
    rows: list = []
    while time.monotonic() < deadline:
        db = sqlite3.connect("file:/var/lib/vx11/vx11.db?mode=ro", uri=True)
        marks = ",".join("?" * len(ids))
        rows = db.execute(f"SELECT status, ended_at, expires_at FROM spawner_hijas "
                          f"WHERE id IN ({marks})", ids).fetchall()
        db.close()
        if all(r[0] not in ("requested", "starting", "running") for r in rows):
            break
        time.sleep(0.2)
    errs = [abs(r[1] - r[2]) for r in rows if r[0] == "expired" and r[1] and r[2]]
    out.update(ttl_expired=len(errs), ttl_not_expired=len(rows) - len(errs),
               ttl_stop_error_p50_s=pct(errs, 50), ttl_stop_error_p99_s=pct(errs, 99),
               ttl_stop_error_max_s=max(errs) if errs else float("nan"))

    out.update(oom_detect(c, 5 if quick else 20))

    _st, doc = c.call("GET", "/openapi.json")
    paths = []
    for path, ops in doc["paths"].items():
        for method in ops:
            if (path, method) != ("/health", "get"):
                paths.append((method.upper(), path.replace("{id}", "abcdefghij")))
    paths += [("GET", "/"), ("GET", "/nope"), ("POST", "/vx11/nope"), ("GET", "/health/x"),
              ("DELETE", "/health"), ("PUT", "/vx11/spawn"), ("GET", "/metrics")]
    n401 = 0
    bad = []
    anon = Client(None)
    for method, path in paths:
        st, _ = anon.call(method, path, {} if method in ("POST", "PUT") else None, token=False)
        if st == 401:
            n401 += 1
        else:
            bad.append(f"{method} {path}: {st}")
    out.update(paths_checked=len(paths), unauthorized_paths_401=n401, not_401=bad)
    return out


# --- on the host --------------------------------------------------------------------------

def host(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    from vx11d.ctl.sandbox import Sandbox

    sb = Sandbox(os.environ.get("VX11_SANDBOX") or f"vx11bench-{os.getpid()}")
    t0 = time.monotonic()
    sb.up()
    try:
        start_madre_and_gateway(sb, REPO, "stop")
        res = run_inside(sb, str(Path(__file__).resolve()), args.quick, 600)
        if res is None:
            return 1
        enforced = sb.enforced()
        res["limits_enforced"] = all(enforced.values())
        res["limits_enforced_controllers"] = sorted(c for c, ok in enforced.items() if ok)
    finally:
        if not args.keep:
            sb.down()
    res["total_s"] = round(time.monotonic() - t0, 1)
    rows = [("spawn latency p50 / p99 (ms)", f"{res['p50_ms']:.1f} / {res['p99_ms']:.1f}"),
            ("systemd-run p50 (ms)", f"{res['systemd_run_p50_ms']:.1f}"),
            ("systemd-run + every property madre sets p50 (ms)",
             f"{res['systemd_run_basic_p50_ms']:.1f}"),
            ("  ... with DynamicUser=yes instead of the static user p50 (ms)",
             f"{res['systemd_run_dynamic_p50_ms']:.1f}"),
            ("systemd-run + madre's strict sandboxing p50 (ms)",
             f"{res['systemd_run_strict_p50_ms']:.1f}"),
            ("p50 ratio vs systemd-run (goal <= 1.5)", f"{res['p50_ratio_vs_systemd_run']:.2f}"),
            ("p50 ratio vs systemd-run with the same properties",
             f"{res['p50_ratio_vs_systemd_run_basic']:.2f}"),
            ("one systemctl call (process + bus connect) p50 (ms)",
             f"{res['systemctl_call_p50_ms']:.1f}"),
            ("busy loop (beside the dynamic/strict runs): spawn / systemd-run p50 (ms)",
             f"{res['busy_p50_ms']:.1f} / {res['busy_systemd_run_p50_ms']:.1f} "
             f"(ratio {res['busy_p50_ratio_vs_systemd_run']:.2f})"),
            ("p50 ratio (busy loop) vs systemd-run with DynamicUser / strict",
             f"{res['p50_ratio_vs_systemd_run_dynamic']:.2f} / "
             f"{res['p50_ratio_vs_systemd_run_strict']:.2f}"),
            ("sustained spawns/s (goal >= 50)",
             f"{res['spawns_per_s']:.1f} ({res['burst_ok']}/{res['burst']} ok)"),
            ("systemd-run ceiling, same burst: bare / same properties (per s)",
             f"{res['systemd_run_per_s']:.1f} / {res['systemd_run_basic_per_s']:.1f}"),
            ("TTL stop error p50 / p99 / max (s) (goal p99 <= 1.0)",
             f"{res['ttl_stop_error_p50_s']:.3f} / {res['ttl_stop_error_p99_s']:.3f} / "
             f"{res['ttl_stop_error_max_s']:.3f}"),
            ("limits enforced (measured in the sandbox)",
             f"{res['limits_enforced']} ({', '.join(res['limits_enforced_controllers'])})"),
            ("OOM kill to the oom row p50 / max (s) (goal p50 <= 1.0)",
             f"{res['oom_detect_s_p50']:.3f} / {res['oom_detect_s_max']:.3f} "
             f"({res['oom_recorded']}/{res['oom_spawned']} recorded oom)"),
            ("401 sweep", f"{res['unauthorized_paths_401']}/{res['paths_checked']} paths 401"),
            ("total time (s)", f"{res['total_s']}")]
    print_rows(rows)
    for k, v in list(res.items()):
        if isinstance(v, float):
            res[k] = round(v, 4)
    print(json.dumps(res, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(__doc__, inside, host))
