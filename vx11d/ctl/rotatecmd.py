"""``vx11ctl rotate [--dry-run] [--aggressive] [--json] [--local]``: rotate audit dirs now.

Where systemd runs, a plain ``vx11ctl rotate`` starts ``vx11-rotate.service`` (the same
hardened oneshot the timer starts, so files come out with the service's owner and the
same lock) and shows the report that run stored in the ``rotations`` table. The unit's
command line is fixed, so ``--dry-run``, ``--aggressive`` and ``--local`` run
``vx11d rotate`` directly as the calling user (a dry run changes nothing; a real run
as root creates dirs and archives with the owner the service needs, see docs/rotate.md).
vx11ctl imports nothing of the rotator: it drives it through systemd, a child process
and the database.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from .. import config, db
from ..errors import EX_CONFIG
from .main import child_config_error, emit
from .units import systemctl

UNIT = "vx11-rotate.service"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rotate", help="archive old audit dirs now (vx11-rotate.service)",
                       description="Archive audit dirs older than rotate.keep_days, verify "
                       "each archive, then remove the source. A plain run starts "
                       "vx11-rotate.service; the flags run vx11d rotate here.")
    p.add_argument("--dry-run", action="store_true",
                   help="change nothing; print exactly the actions a real run with the "
                   "same flags would take (runs locally)")
    p.add_argument("--aggressive", action="store_true",
                   help="also DELETE archives whose name is older than "
                   "rotate.aggressive_days (never one this run made; runs locally)")
    p.add_argument("--local", action="store_true",
                   help="run vx11d rotate here instead of starting the systemd unit")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=rotate)


def systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")


def rotate(args: argparse.Namespace) -> int:
    if args.local or args.dry_run or args.aggressive or not systemd_running():
        return run_local(args)
    cfg = config.load(args.config)
    t0 = time.time()
    r = systemctl("start", UNIT, check=False)
    row = last_rotation(cfg, since=t0 - 1)
    if row is None:
        msg = (r.stderr.strip() or f"{UNIT} finished") + \
            f"; no report recorded (see journalctl -u {UNIT})"
        emit(args, {"unit": UNIT, "ok": False, "error": msg}, msg)
        return 1
    rep = json.loads(row["report"])
    emit(args, rep, summary(rep, row))
    return 0 if r.returncode == 0 else 1


def run_local(args: argparse.Namespace) -> int:
    """``vx11d rotate`` as a child process, its report passed through."""
    argv = [sys.executable, "-m", "vx11d", "rotate"]
    argv += [f for f, on in (("--dry-run", args.dry_run), ("--aggressive", args.aggressive),
                             ("--json", args.json)) if on]
    env = dict(os.environ)
    if args.config:
        env["VX11_CONFIG"] = args.config
    r = subprocess.run(argv, env=env, check=False, stderr=subprocess.PIPE, text=True)
    if r.returncode == EX_CONFIG:  # the config does not load: one error, the usual way
        raise child_config_error(r.stderr, "rotate")
    sys.stderr.write(r.stderr)
    return r.returncode


def last_rotation(cfg: config.Config, since: float) -> dict | None:
    """The newest real rotation row started at or after ``since``."""
    if not os.path.exists(cfg.db.path):
        return None
    d = db.Database.from_config(cfg, readonly=True)
    try:
        rows = d.query("SELECT * FROM rotations WHERE started_at >= ? AND dry_run = 0 "
                       "ORDER BY id DESC LIMIT 1", (since,))
    finally:
        d.close()
    return dict(rows[0]) if rows else None


def summary(rep: dict, row: dict) -> str:
    p = rep.get("phases", {})
    lines = [f"{UNIT}: {row['archived']} archived, {row['deleted_archives']} archives "
             f"deleted, {row['bytes_in']} bytes in, {row['bytes_out']} bytes out, "
             f"{row['errors']} errors; {row['active_dirs']} active dirs, "
             f"{row['archive_count']} archives, {row['total_bytes']} bytes stored"]
    scan = p.get("scan", {})
    if scan:
        lines.append(f"scan: {scan.get('due', 0)} due, {scan.get('active', 0)} active, "
                     f"{scan.get('future', 0)} future, {scan.get('ignored', 0)} not "
                     "timestamp names (left alone)")
    lines += [f"  {a}" for a in rep.get("actions", [])]
    lines += [f"  ERROR {e}" for e in rep.get("errors", [])]
    return "\n".join(lines)
