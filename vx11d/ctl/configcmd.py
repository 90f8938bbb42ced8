"""``vx11ctl config check|sample``."""

from __future__ import annotations

import argparse

from .. import config
from . import hermeslimits
from .main import emit


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="validate or print the configuration")
    s = p.add_subparsers(dest="config_command", required=True)
    c = s.add_parser("check", help="validate a config file")
    c.add_argument("--path", help="file to check (default: the config in force)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=check)
    m = s.add_parser("sample", help="print every key with its default and meaning")
    m.set_defaults(func=lambda a: print(config.sample(), end="") or 0)


def check(args: argparse.Namespace) -> int:
    cfg = config.load(args.path or args.config)
    limits = hermeslimits.unit_memory()
    bad = hermeslimits.problems(int(cfg.hermes.rss_limit), limits) if limits else []
    if bad:
        emit(args, {"path": cfg.path, "ok": False, "problems": bad},
             "\n".join(f"{cfg.path}: {b}" for b in bad))
        return 1
    emit(args, {"path": cfg.path, "ok": True}, f"{cfg.path}: ok")
    return 0
