"""``vx11d reaper [--scan-once [--json]]``: the wiring of the reaper daemon."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

import yaml

from ..config import Config, ReaperRule
from ..confload import build
from ..db import Database
from ..errors import ConfigError
from ..metrics import new_registry, serve
from ..runtime import run
from .breaker import Breaker, share_verdict
from .daemon import ReaperService, build_evaluator, db_hija_lookup, report_dict
from .metrics import ReaperMetrics
from .proc import scan
from .rules import HIJA_RULE


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vx11d reaper")
    p.add_argument("--scan-once", action="store_true",
                   help="print what the reaper sees and would do, then exit (sends nothing)")
    p.add_argument("--json", action="store_true", help="with --scan-once: JSON output")
    p.add_argument("--rule", action="append", default=[], metavar="YAML",
                   help="with --scan-once: also try this rule (a YAML mapping, as in "
                   "reaper.rules), evaluated before the configured ones")
    p.add_argument("--proc", default="/proc", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def candidate_rules(texts: list[str]) -> tuple[ReaperRule, ...]:
    """Rules given on the command line, checked like the config's (ConfigError)."""
    rules = []
    for i, text in enumerate(texts, 1):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError("--rule", f"rule {i}", f"not valid YAML: "
                              f"{getattr(e, 'problem', e)}") from e
        rules.append(build(ReaperRule, data, "--rule", f"rule {i}"))
    return tuple(rules)


def scan_once(cfg: Config, proc_path: str, as_json: bool,
              rules: list[str] | None = None) -> int:
    """One read-only evaluation printed to stdout: no signal, no DB write."""
    extra = candidate_rules(rules or [])
    if extra:
        names = [r.name for r in extra]
        clash = sorted({n for n in names if names.count(n) > 1}
                       | set(names) & {r.name for r in cfg.reaper.rules})
        if clash:
            raise ConfigError("--rule", "name", f"rule name {clash[0]!r} is used twice")
        cfg = dataclasses.replace(cfg, reaper=dataclasses.replace(
            cfg.reaper, rules=(*extra, *cfg.reaper.rules)))
    lookup = None
    if os.path.exists(cfg.db.path):
        lookup = db_hija_lookup(Database.from_config(cfg, readonly=True))
    ev = build_evaluator(cfg, proc_path, lookup)
    rep = ev.evaluate(scan(proc_path))
    data = report_dict(rep)
    data["breaker"] = breaker_view(cfg, data)
    data["tried_rules"] = [r.name for r in extra]
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True))
        return 0
    sys.stdout.write(scan_text(data))
    return 0


def breaker_view(cfg: Config, data: dict[str, Any]) -> dict[str, Any]:
    """Whether the breaker is stopped now, and whether this scan's findings would trip it."""
    counts: dict[str, int] = {}
    matched: dict[str, int] = {}
    for f in data["findings"]:
        matched[f["rule"]] = matched.get(f["rule"], 0) + 1
        if f["action"] != "observe" and f["rule"] != HIJA_RULE:
            counts[f["rule"]] = counts.get(f["rule"], 0) + 1
    trip = share_verdict(cfg.reaper, counts, data["processes"])
    now = Breaker(cfg.reaper, cfg.reaper.breaker_file).trip
    return {"stopped": now is not None, "stopped_reason": now.reason if now else None,
            "would_trip": trip.reason if trip else None, "matched_by_rule": matched,
            "would_signal_by_rule": counts}


def scan_text(data: dict[str, Any]) -> str:
    """The scan for a person: totals, zombie parents, each finding, the breaker's view."""
    b = data["breaker"]
    lines = [f"{data['processes']} processes, {data['zombies']} zombies, "
             f"{len(data['findings'])} matched by rules, {data['protected']} protected"]
    if b["stopped"]:
        lines.append(f"ENFORCEMENT STOPPED: {b['stopped_reason']}; observe-only until "
                     "`vx11ctl reaper rearm`")
    for name in data["tried_rules"]:
        lines.append(f"rule {name} (tried, not enabled): matches "
                     f"{b['matched_by_rule'].get(name, 0)}, would signal "
                     f"{b['would_signal_by_rule'].get(name, 0)}")
    if b["would_trip"]:
        lines.append(f"the circuit breaker would stop enforcement: {b['would_trip']}")
    for z in data["zombie_parents"]:
        lines.append(f"  {z['zombies']} zombies under pid {z['parent_pid']} "
                     f"({z['parent_comm']})")
    for f in data["findings"]:
        lines.append(f"  pid {f['pid']} ({f['comm']}) uid {f['uid']} rule {f['rule']}: would "
                     f"{f['action']} [{f['event']}] age {f['age_s']}s cgroup {f['cgroup']}")
    if data["hija_records_unavailable"]:
        lines.append("  hija records unavailable: hija processes not judged")
    return "\n".join(lines) + "\n"


def main(cfg: Config, argv: list[str]) -> int:
    """Build config, DB, metrics and the service, then run it under systemd."""
    args = _parse(argv)
    if args.scan_once:
        return scan_once(cfg, args.proc, args.json, args.rule)
    if args.rule:
        raise ConfigError("--rule", "", "--rule is only for --scan-once")
    db = Database.from_config(cfg)  # migrated by the service (or degraded until it can)
    registry = new_registry("reaper", proc_path=args.proc)
    service = ReaperService(cfg, db, ReaperMetrics(registry), proc_path=args.proc,
                            breaker_file=cfg.reaper.breaker_file)
    server = serve(registry, cfg.reaper.metrics_address, cfg.reaper.metrics_port)
    try:
        return run(service)
    finally:
        server.shutdown()
        db.close()
