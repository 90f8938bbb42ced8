"""``vx11ctl reaper scan [--rule YAML] [--json]`` and ``vx11ctl reaper rearm``.

vx11ctl imports no daemon internals, so ``scan`` runs ``vx11d reaper --scan-once`` (the
daemon's own scanner and rules, read-only: it sends no signal and writes nothing) with
the same Python and the same config file. ``rearm`` removes the file in which the
reaper remembers that its circuit breaker stopped enforcement (``reaper.breaker_file``)
and reloads ``vx11-reaper.service``, which reads it again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

from .. import config
from ..errors import EX_CONFIG, Vx11Error
from .main import child_config_error, emit
from .units import systemctl

UNIT = "vx11-reaper.service"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reaper", help="the zombie and orphan reaper")
    s = p.add_subparsers(dest="reaper_command", metavar="ACTION")
    sc = s.add_parser("scan", help="one-shot report: zombies by parent, what rules match "
                      "and what the reaper would do (sends nothing)")
    sc.add_argument("--rule", action="append", default=[], metavar="YAML",
                    help="try a rule that is not enabled yet, e.g. --rule '{name: try, "
                    "comm: \"^node$\", action: terminate}' (repeatable; evaluated before "
                    "the configured rules; says whether it would trip the circuit breaker)")
    sc.add_argument("--json", action="store_true")
    sc.set_defaults(func=scan)
    ra = s.add_parser("rearm", help="resume enforcement after the circuit breaker stopped it "
                      "(fix or remove the rule first: `vx11ctl reaper scan` shows it)")
    ra.add_argument("--json", action="store_true")
    ra.set_defaults(func=rearm)


def _scan(cfg_path: str | None, as_json: bool, rules: list[str] | None = None
          ) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if cfg_path:
        env["VX11_CONFIG"] = cfg_path
    argv = [sys.executable, "-m", "vx11d", "reaper", "--scan-once"]
    if as_json:
        argv.append("--json")
    for r in rules or []:
        argv += ["--rule", r]
    r = subprocess.run(argv, env=env, check=False, timeout=120, capture_output=True,
                       text=True)
    if r.returncode == EX_CONFIG:
        raise child_config_error(r.stderr, "reaper scan")
    if r.returncode != 0:
        raise Vx11Error(f"reaper scan failed ({r.returncode}): "
                        f"{' '.join(r.stderr.split())[-300:]}")
    return r


def scan_report(cfg_path: str | None) -> dict[str, Any]:
    """The reaper's one-shot scan as a dict (zombies, orphans, findings)."""
    return json.loads(_scan(cfg_path, as_json=True).stdout)


def scan(args: argparse.Namespace) -> int:
    sys.stdout.write(_scan(args.config, args.json, args.rule).stdout)
    return 0


def rearm(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    path = cfg.reaper.breaker_file
    try:
        with open(path, encoding="utf-8") as f:
            reason = str(json.load(f).get("reason", ""))
    except FileNotFoundError:
        emit(args, {"ok": True, "rearmed": False, "breaker_file": path},
             "the reaper's circuit breaker is armed; nothing to do")
        return 0
    except (OSError, ValueError, AttributeError) as e:
        reason = f"unreadable ({e})"
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise Vx11Error(f"{path}: cannot remove: {e.strerror} (run as root)") from e
    reloaded = False
    if os.path.isdir("/run/systemd/system"):
        r = systemctl("try-reload-or-restart", UNIT,
                      check=False)
        reloaded = r.returncode == 0
    emit(args, {"ok": True, "rearmed": True, "was": reason, "breaker_file": path,
                "reloaded": reloaded},
         f"re-armed the reaper's circuit breaker (it had stopped: {reason}); "
         + ("vx11-reaper reloaded: enforcement resumes at its next scan" if reloaded
            else "enforcement resumes when vx11-reaper next starts or reloads"))
    return 0
