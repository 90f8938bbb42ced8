"""``vx11ctl reaper scan [--json]``: what the reaper sees and would do, right now.

vx11ctl imports no daemon internals, so this runs ``vx11d reaper --scan-once`` (the
daemon's own scanner and rules, read-only: it sends no signal and writes nothing) with
the same Python and the same config file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from ..errors import Vx11Error


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reaper", help="the zombie and orphan reaper")
    s = p.add_subparsers(dest="reaper_command", required=True)
    sc = s.add_parser("scan", help="one-shot report: zombies by parent, what rules match "
                      "and what the reaper would do (sends nothing)")
    sc.add_argument("--json", action="store_true")
    sc.set_defaults(func=scan)


def _scan(config: str | None, as_json: bool, capture: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if config:
        env["VX11_CONFIG"] = config
    argv = [sys.executable, "-m", "vx11d", "reaper", "--scan-once"]
    if as_json:
        argv.append("--json")
    r = subprocess.run(argv, env=env, check=False, timeout=120, capture_output=capture,
                       text=True)
    if r.returncode == 78:
        raise Vx11Error("reaper scan: the config does not load"
                        + (f": {r.stderr.strip()}" if capture else " (see the line above)"))
    return r


def scan_report(config: str | None) -> dict[str, Any]:
    """The reaper's one-shot scan as a dict (zombies, orphans, findings)."""
    r = _scan(config, as_json=True, capture=True)
    if r.returncode != 0:
        raise Vx11Error(f"reaper scan failed ({r.returncode}): {r.stderr.strip()}")
    return json.loads(r.stdout)


def scan(args: argparse.Namespace) -> int:
    return _scan(args.config, args.json, capture=False).returncode
