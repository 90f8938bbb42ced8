"""``vx11ctl config check|sample``."""

from __future__ import annotations

import argparse
import re

from .. import config
from . import hermeslimits
from .main import emit

# Names, command lines and cgroup paths of very different processes: a rule whose every
# pattern matches all of them (and that asks nothing else) matches every process.
PROBES = ("", "a", "0", "systemd", "dbus-daemon", "sshd", "agetty", "bash", "python3",
          "x y z", "/", "/init.scope", "/system.slice/dbus.service",
          "/user.slice/user-1000.slice/session-1.scope", "/usr/bin/python3 -m vx11d reaper")


def broad_rules(cfg: config.Config) -> list[str]:
    """Warnings for reaper rules that match every process."""
    out = []
    for i, r in enumerate(cfg.reaper.rules):
        if r.user or r.orphan or r.zombie_parent:
            continue
        pats = [(k, v) for k, v in (("comm", r.comm), ("cmdline", r.cmdline),
                                    ("cgroup", r.cgroup)) if v]
        if pats and all(all(re.search(v, p) for p in PROBES) for _, v in pats):
            given = ", ".join(f"{k} {v!r}" for k, v in pats)
            what = ("only the protected set and the circuit breaker stand between it and "
                    "the host" if r.action == "terminate" else "it would terminate "
                    "everything if its action became terminate")
            out.append(f"reaper.rules[{i}] ({r.name}): matches every process ({given} "
                       f"matches any); {what}")
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="validate or print the configuration")
    s = p.add_subparsers(dest="config_command", metavar="ACTION")
    c = s.add_parser("check", help="validate a config file (and warn about reaper rules "
                     "that match every process)")
    c.add_argument("--path", help="file to check (default: the config in force)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=check)
    m = s.add_parser("sample", help="print every key with its default and meaning")
    m.set_defaults(func=lambda a: print(config.sample(), end="") or 0)


def check(args: argparse.Namespace) -> int:
    cfg = config.load(args.path or args.config)
    limits = hermeslimits.unit_memory()
    bad = hermeslimits.problems(int(cfg.hermes.rss_limit), limits) if limits else []
    warnings = broad_rules(cfg)
    if bad:
        emit(args, {"path": cfg.path, "ok": False, "problems": bad, "warnings": warnings},
             "\n".join([*(f"{cfg.path}: {b}" for b in bad),
                        *(f"warning: {w}" for w in warnings)]))
        return 1
    emit(args, {"path": cfg.path, "ok": True, "warnings": warnings},
         "\n".join([f"{cfg.path}: ok", *(f"warning: {w}" for w in warnings)]))
    return 0
