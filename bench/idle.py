"""Benchmark: what the set costs while nothing happens (CPU, RSS, wakeups), beside node_exporter.

    .venv/bin/python bench/idle.py [--quick]

Boots a sandbox (a real systemd in systemd-nspawn), starts the set (vx11.target, the
gateway service itself, not only its socket) and Debian's prometheus-node-exporter (the
peer: what every host a Prometheus scrapes already runs), and runs this same file inside
it (``--inside``). After the set settled, four windows, each measured per daemon (the
gateway, madre, the reaper, and node_exporter):

1. ``idle``: no traffic, no hijas, only the container's own processes;
2. ``idle_scraped``: the same, every /metrics scraped every 15 s (a new connection per
   scrape, the whole body read, as a Prometheus does), node_exporter's too;
3. ``loaded``: 1,000 hijas in the DB (ended rows, as madre records them) and 10,000
   idle processes in the container (forked children blocked in pause()), no scrapes;
4. ``loaded_scraped``: the same with the scrapes.

Per daemon: CPU in % of one core from the scheduler's nanosecond counters
(``cpu.stat`` ``usage_usec`` of the unit's cgroup: every thread, those that ended in the
window too, e.g. a scrape's; ``cpu_percent_threads`` is the sum over the live threads'
``/proc/PID/task/*/schedstat``), RSS (``VmRSS``; beside it its anonymous part and the
PSS, where a page shared by the three daemons counts a third in each) at the end of the
window, and wakeups
per second (voluntary + involuntary context switches of every live thread, from
``/proc/PID/task/*/status``). Goals: the set (gateway + madre + reaper) <= 0.15 % of one
core in ``idle``; each daemon <= node_exporter under the same scrapes (the worst ratio of
the scraped windows); the set's RSS <= 90 MB; <= 1 wakeup per second per daemon without
scrapes. ``--quick``: 30 s windows (a 15 s settle), else 120 s (60 s settle).

``--hour``: after the ``idle_scraped`` window, the set stays idle for an hour from its
start, scraped every 15 s, and each daemon's RSS (``VmRSS``, and its anonymous and
file-backed parts) is sampled every 5 minutes: ``rss_hour`` in the last line (about
70 min in all).

The last line is one JSON object: ``set_idle_cpu_percent``, ``set_rss_mb``,
``worst_cpu_ratio_vs_node_exporter``, ``set_pss_mb``, ``set_rss_anon_mb``, ``daemons``
(per daemon: ``cpu_percent``, ``rss_mb``, ``wakeups_per_s`` in ``idle``, and the other
windows' figures beside them).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _idlekids import start_idle, stop_idle
from _sandboxed import main, run_in, set_up_node_exporter

REPO = Path(__file__).resolve().parents[1]
UNITS = {"gateway": "vx11-gateway.service", "madre": "vx11-madre.service",
         "reaper": "vx11-reaper.service", "node_exporter": "prometheus-node-exporter.service"}
PORTS = {"gateway": 9711, "madre": 9712, "reaper": 9713, "node_exporter": 9100}
SET = ("gateway", "madre", "reaper")
SCRAPE_EVERY = 15.0
PROCESSES = 10_000
HIJAS = 1_000
HOUR_S, HOUR_SAMPLE_EVERY = 3600.0, 300.0
GOAL_SET_CPU, GOAL_SET_RSS_MB, GOAL_WAKEUPS = 0.15, 90.0, 1.0



# --- inside the container ----------------------------------------------------------------

def _show(unit: str, prop: str) -> str:
    return subprocess.run(["systemctl", "show", "-p", prop, "--value", unit],
                          capture_output=True, text=True, check=False).stdout.strip()


class Daemon:
    """One daemon's counters: its main PID's threads and its unit's cgroup."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pid = int(_show(UNITS[name], "MainPID") or 0)
        if not self.pid:
            raise SystemExit(f"{UNITS[name]} is not running")
        self.cpu_stat = f"/sys/fs/cgroup{_show(UNITS[name], 'ControlGroup')}/cpu.stat"

    def sample(self) -> dict[str, float]:
        ns = switches = 0
        task = f"/proc/{self.pid}/task"
        for tid in os.listdir(task):
            try:
                with open(f"{task}/{tid}/schedstat", "rb") as f:
                    ns += int(f.read().split()[0])
                with open(f"{task}/{tid}/status") as f:
                    for line in f:
                        if line.startswith(("voluntary_ctxt_switches",
                                            "nonvoluntary_ctxt_switches")):
                            switches += int(line.split()[1])
            except (FileNotFoundError, ProcessLookupError):
                pass  # a thread that ended between the listing and the read
        rss_kb = anon_kb = file_kb = 0
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss_kb = int(line.split()[1])
                elif line.startswith("RssAnon:"):
                    anon_kb = int(line.split()[1])
                elif line.startswith("RssFile:"):
                    file_kb = int(line.split()[1])
        pss_kb = 0
        with open(f"/proc/{self.pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss_kb = int(line.split()[1])
        cg_us = None
        try:
            with open(self.cpu_stat) as f:
                for line in f:
                    if line.startswith("usage_usec "):
                        cg_us = int(line.split()[1])
        except OSError:
            pass
        return {"thread_ns": ns, "switches": switches, "rss_kb": rss_kb, "cgroup_us": cg_us,
                "anon_kb": anon_kb, "file_kb": file_kb, "pss_kb": pss_kb,
                "t": time.monotonic()}


def _scrape(port: int) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        r.read()


def window(daemons: dict[str, Daemon], seconds: float, scrape: bool) -> dict[str, dict]:
    """Measure every daemon over ``seconds``; with ``scrape``, every /metrics every 15 s
    (from the window's start)."""
    before = {n: d.sample() for n, d in daemons.items()}
    start = time.monotonic()
    end = start + seconds
    nxt = start
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if scrape and now >= nxt:
            for name in daemons:
                _scrape(PORTS[name])
            nxt += SCRAPE_EVERY
        time.sleep(max(0.0, min(end, nxt if scrape else end) - time.monotonic()))
    out = {}
    for n, d in daemons.items():
        a, b = before[n], d.sample()
        dt = b["t"] - a["t"]
        threads = (b["thread_ns"] - a["thread_ns"]) / 1e9 / dt * 100
        cg = None
        if a["cgroup_us"] is not None and b["cgroup_us"] is not None:
            cg = (b["cgroup_us"] - a["cgroup_us"]) / 1e6 / dt * 100
        out[n] = {"cpu_percent": round(cg if cg is not None else threads, 4),
                  "cpu_percent_threads": round(threads, 4),
                  "rss_mb": round(b["rss_kb"] / 1024, 1),
                  "rss_anon_mb": round(b["anon_kb"] / 1024, 1),
                  "rss_file_mb": round(b["file_kb"] / 1024, 1),
                  "pss_mb": round(b["pss_kb"] / 1024, 1),
                  "wakeups_per_s": round((b["switches"] - a["switches"]) / dt, 2)}
    return out


def _wait_metrics(timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    for port in PORTS.values():
        while True:
            try:
                _scrape(port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"nothing answers on :{port}") from None
                time.sleep(0.5)


def _add_hijas(n: int) -> None:
    conn = sqlite3.connect("/var/lib/vx11/vx11.db", timeout=30)
    t = time.time()
    conn.executemany(
        "INSERT INTO spawner_hijas (id, template, ttl_s, unit, status, created_at, "
        "started_at, ended_at, exit_status, result) VALUES "
        "(?, 'echo', 5, ?, 'exited', ?, ?, ?, 0, 'success')",
        [(f"idle{i:04d}", f"vx11-hija-idle{i:04d}.service", t - 60, t - 60, t - 59)
         for i in range(n)])
    conn.commit()
    conn.close()


def hour(daemons: dict[str, Daemon]) -> dict[str, list]:
    """Idle and scraped until an hour after the set started: per daemon, its RSS in MB
    (total, anonymous, file-backed) every 5 minutes, with the minutes since its start."""
    started = {n: time.monotonic() - _age_s(d.pid) for n, d in daemons.items()}
    out: dict[str, list] = {n: [] for n in daemons}

    def sample() -> None:
        for n, d in daemons.items():
            s = d.sample()
            out[n].append({"minutes": round((time.monotonic() - started[n]) / 60, 1),
                           "rss_mb": round(s["rss_kb"] / 1024, 1),
                           "rss_anon_mb": round(s["anon_kb"] / 1024, 1),
                           "rss_file_mb": round(s["file_kb"] / 1024, 1)})

    sample()
    end = min(started.values()) + HOUR_S
    while time.monotonic() < end:
        window(daemons, min(HOUR_SAMPLE_EVERY, max(1.0, end - time.monotonic())), scrape=True)
        sample()
    return out


def _age_s(pid: int) -> float:
    """Seconds since the process started (its start time in clock ticks since boot)."""
    with open(f"/proc/{pid}/stat") as f:
        start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def inside(quick: bool) -> dict:
    """Runs in the container: the four windows."""
    seconds, settle = (30.0, 15.0) if quick else (120.0, 60.0)
    _wait_metrics()
    daemons = {n: Daemon(n) for n in UNITS}
    time.sleep(settle)
    res: dict[str, object] = {"window_s": seconds}
    res["idle"] = window(daemons, seconds, scrape=False)
    res["idle_scraped"] = window(daemons, seconds, scrape=True)
    if "--hour" in sys.argv:
        res["rss_hour"] = hour(daemons)
    _add_hijas(HIJAS)
    with tempfile.TemporaryDirectory() as tmp:
        procs = start_idle(PROCESSES, tmp)
        try:
            # the reaper lists the new PIDs at its next check and reads them at its next
            # scan (30 s interval): let that happen before the window
            time.sleep(35.0 if quick else 60.0)
            res["loaded"] = window(daemons, seconds, scrape=False)
            res["loaded_scraped"] = window(daemons, seconds, scrape=True)
            res["processes"] = len([p for p in os.listdir("/proc") if p.isdigit()])
        finally:
            stop_idle(procs)
    return res


# --- on the host -------------------------------------------------------------------------

def host(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(REPO))
    from vx11d.ctl.sandbox import Sandbox

    sb = Sandbox(f"vx11b-idle-{os.getpid()}", die_with_caller=True)
    try:
        sb.up(timeout=180)

        set_up_node_exporter(sb)
        run_in(sb, "systemctl", "start", "vx11.target", "vx11-gateway.service",
               "prometheus-node-exporter.service", timeout=900)
        out = run_in(sb, "/opt/vx11d/bin/python", str(Path(__file__).resolve()), "--inside",
                     *(["--quick"] if args.quick else []),
                     *(["--hour"] if args.hour else []),
                     timeout=900 + (HOUR_S if args.hour else 0))
        res = json.loads(out.strip().splitlines()[-1])
    finally:
        sb.down()
    phases = ("idle", "idle_scraped", "loaded", "loaded_scraped")
    print(f"{res['window_s']:.0f} s windows; {res.get('processes', '?')} processes in the "
          f"loaded ones (busy machine unless told otherwise)")
    print(f"{'daemon':<14}" + "".join(f"{p + ' cpu%':>20}" for p in phases)
          + f"{'rss MB':>8}{'rss MB loaded':>14}{'wakeups/s':>10}{'loaded':>8}")
    for name in UNITS:
        print(f"{name:<14}" + "".join(f"{res[p][name]['cpu_percent']:>20.4f}" for p in phases)
              + f"{res['idle'][name]['rss_mb']:>8}{res['loaded'][name]['rss_mb']:>14}"
              + f"{res['idle'][name]['wakeups_per_s']:>10}"
              + f"{res['loaded'][name]['wakeups_per_s']:>8}")
    node = {p: max(res[p]["node_exporter"]["cpu_percent"], 1e-6) for p in phases}
    ratio = max(res[p][d]["cpu_percent"] / node[p] for p in ("idle_scraped", "loaded_scraped")
                for d in SET)
    set_cpu = sum(res["idle"][d]["cpu_percent"] for d in SET)
    set_rss = sum(res["idle"][d]["rss_mb"] for d in SET)
    daemons = {}
    for d in (*SET, "node_exporter"):
        daemons[d] = {**res["idle"][d],
                      "cpu_percent_scraped": res["idle_scraped"][d]["cpu_percent"],
                      "cpu_percent_loaded": res["loaded"][d]["cpu_percent"],
                      "cpu_percent_loaded_scraped": res["loaded_scraped"][d]["cpu_percent"],
                      "rss_mb_loaded": res["loaded"][d]["rss_mb"],
                      "wakeups_per_s_loaded": res["loaded"][d]["wakeups_per_s"]}
    summary = {
        "set_idle_cpu_percent": round(set_cpu, 4),
        "set_loaded_cpu_percent": round(sum(res["loaded"][d]["cpu_percent"] for d in SET), 4),
        "set_rss_mb": round(set_rss, 1),
        # the same memory with each shared page (libpython, libcrypto: mapped by all
        # three) counted once across them (PSS), and the anonymous part alone
        "set_pss_mb": round(sum(res["idle"][d]["pss_mb"] for d in SET), 1),
        "set_rss_anon_mb": round(sum(res["idle"][d]["rss_anon_mb"] for d in SET), 1),
        "set_rss_mb_loaded": round(sum(res["loaded"][d]["rss_mb"] for d in SET), 1),
        "worst_cpu_ratio_vs_node_exporter": round(ratio, 3),
        "daemons": daemons,
        "goals_met": {
            "set_idle_cpu": set_cpu <= GOAL_SET_CPU,
            "each_le_node_exporter": ratio <= 1.0,
            "set_rss": set_rss <= GOAL_SET_RSS_MB,
            "wakeups": all(res[p][d]["wakeups_per_s"] <= GOAL_WAKEUPS
                           for p in ("idle", "loaded") for d in SET)},
        "window_s": res["window_s"],
        "quick": args.quick,
    }
    if "rss_hour" in res:
        print("RSS MB (anonymous + file-backed) over the first hour, idle and scraped:")
        print(f"{'minutes':<10}" + "".join(f"{d:>22}" for d in SET))
        for i, row in enumerate(res["rss_hour"]["gateway"]):
            cells = [res["rss_hour"][d][i] for d in SET]
            print(f"{row['minutes']:<10}" + "".join(
                f"{c['rss_mb']:>8} ({c['rss_anon_mb']:>5}+{c['rss_file_mb']:>5})"
                for c in cells))
        summary["rss_hour"] = res["rss_hour"]
        first = sum(res["rss_hour"][d][0]["rss_mb"] for d in SET)
        last = sum(res["rss_hour"][d][-1]["rss_mb"] for d in SET)
        summary["set_rss_mb_start"], summary["set_rss_mb_hour"] = round(first, 1), round(last, 1)
    print(json.dumps(summary, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(__doc__, inside, host, quick_help="30 s windows (about 4 min in all)",
                  keep=False, flags={"--hour": "also RSS over the set's first idle hour "
                                     "(about 70 min in all)"}))
