"""``vx11d reaper [--scan-once [--json]]``: the wiring of the reaper daemon."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..config import Config
from ..db import Database
from ..metrics import new_registry, serve
from ..runtime import run
from .daemon import ReaperService, build_evaluator, db_hija_lookup, report_dict
from .metrics import ReaperMetrics
from .proc import scan


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vx11d reaper")
    p.add_argument("--scan-once", action="store_true",
                   help="print what the reaper sees and would do, then exit (sends nothing)")
    p.add_argument("--json", action="store_true", help="with --scan-once: JSON output")
    p.add_argument("--proc", default="/proc", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def scan_once(cfg: Config, proc_path: str, as_json: bool) -> int:
    """One read-only evaluation printed to stdout: no signal, no DB write."""
    lookup = None
    if os.path.exists(cfg.db.path):
        lookup = db_hija_lookup(Database.from_config(cfg, readonly=True))
    ev = build_evaluator(cfg, proc_path, lookup)
    data = report_dict(ev.evaluate(scan(proc_path)))
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    lines = [f"{data['processes']} processes, {data['zombies']} zombies, "
             f"{len(data['findings'])} matched by rules, {data['protected']} protected"]
    for z in data["zombie_parents"]:
        lines.append(f"  {z['zombies']} zombies under pid {z['parent_pid']} "
                     f"({z['parent_comm']})")
    for f in data["findings"]:
        lines.append(f"  pid {f['pid']} ({f['comm']}) rule {f['rule']}: would "
                     f"{f['action']} [{f['event']}] age {f['age_s']}s cgroup {f['cgroup']}")
    if data["hija_records_unavailable"]:
        lines.append("  hija records unavailable: hija processes not judged")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def main(cfg: Config, argv: list[str]) -> int:
    """Build config, DB, metrics and the service, then run it under systemd."""
    args = _parse(argv)
    if args.scan_once:
        return scan_once(cfg, args.proc, args.json)
    db = Database.from_config(cfg)  # migrated by the service (or degraded until it can)
    registry = new_registry("reaper", proc_path=args.proc)
    service = ReaperService(cfg, db, ReaperMetrics(registry), proc_path=args.proc)
    server = serve(registry, cfg.reaper.metrics_address, cfg.reaper.metrics_port)
    try:
        return run(service)
    finally:
        server.shutdown()
        db.close()
