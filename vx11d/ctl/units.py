"""``vx11ctl up|down|status``: the daemon set as systemd sees it, plus a DB summary."""

from __future__ import annotations

import argparse
import os
import subprocess
import time

from .. import config, db, textfmt, units
from ..errors import SystemdError
from . import state
from .main import emit

TARGET = "vx11.target"
PROPS = ["Id", "LoadState", "ActiveState", "SubState", "StatusText", "NRestarts", "MainPID",
         "Result", "ExecMainStatus"]


def register(sub: argparse._SubParsersAction) -> None:
    u = sub.add_parser("up", help="start the daemon set (vx11.target)")
    u.add_argument("--profile", choices=["solo_madre", "full"], default=None,
                   help="full also starts Hermes (default: the configured profile)")
    u.set_defaults(func=up)
    d = sub.add_parser("down", help="stop every vx11 unit")
    d.set_defaults(func=down)
    s = sub.add_parser("status", help="units, their STATUS lines and a DB summary")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=status)


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run systemctl; SystemdError with its message when ``check`` and it fails."""
    r = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False,
                       env={**os.environ, "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"})
    if check and r.returncode != 0:
        raise SystemdError(f"systemctl {' '.join(args)}: {r.stderr.strip() or r.returncode}")
    return r


def unit_names() -> list[str]:
    """Every vx11 unit systemd knows (loaded or just installed)."""
    names = set()
    for args in (["list-units", "--all", "--plain", "--no-legend", "vx11*"],
                 ["list-unit-files", "--plain", "--no-legend", "vx11*"]):
        r = systemctl(*args, check=False)
        for line in r.stdout.splitlines():
            parts = line.split()
            if parts and not parts[0].startswith("vx11-hija-"):
                names.add(parts[0])
    return sorted(n for n in names if "@." not in n)


def show(names: list[str]) -> list[dict[str, str]]:
    """PROPS of each unit of ``names`` as text, as ``systemctl show -p`` prints them,
    read over D-Bus by the core reader (:mod:`vx11d.units`)."""
    if not names:
        return []
    found = units.read_all(names, load=True)
    return [{k: _shown(p[k]) for k in PROPS if k in p} for p in found.values() if p]


def _shown(v: object) -> str:
    """A property value as ``systemctl show`` prints a simple one."""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list | tuple):
        return " ".join(map(str, v))
    return str(v)


def up(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    profile = args.profile or cfg.madre.profile
    systemctl("start", TARGET)
    if profile == "full":
        systemctl("start", "vx11-hermes.service")
    print(f"vx11 up (profile {profile})")
    return 0


def down(args: argparse.Namespace) -> int:
    names = unit_names()
    systemctl("stop", TARGET, *[n for n in names if n != TARGET], check=False)
    print("vx11 down")
    return 0


def db_summary(cfg: config.Config) -> dict[str, object]:
    """Counts from the shared DB (empty when it does not exist yet)."""
    if not os.path.exists(cfg.db.path):
        return {"path": cfg.db.path, "exists": False}
    d = db.Database.from_config(cfg, readonly=True)
    try:
        with d.read() as c:
            hijas = {r[0]: r[1] for r in c.execute(
                "SELECT status, count(*) FROM spawner_hijas GROUP BY status")}
            live = [dict(r) for r in c.execute(
                "SELECT component, expires_at FROM activations WHERE ended_at IS NULL "
                "AND expires_at > ?", (time.time(),))]
            events = c.execute("SELECT count(*) FROM events").fetchone()[0]
            last_rot = c.execute("SELECT finished_at, archived, errors FROM rotations "
                                 "ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        d.close()
    return {"path": cfg.db.path, "exists": True, "hijas": hijas, "activations": live,
            "events": events, "last_rotation": dict(last_rot) if last_rot else None}


def status(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    shown = show(unit_names())
    summary = db_summary(cfg)
    lines = []
    for u in shown:
        line = f"{u['Id']:<28} {u['ActiveState']}/{u['SubState']}"
        if u.get("StatusText"):
            line += f"  {u['StatusText']}"
        if u.get("NRestarts", "0") not in ("0", ""):
            line += f"  (restarts: {u['NRestarts']})"
        lines.append(line)
    if summary.get("exists"):
        wins = ", ".join(f"{a['component']} until {textfmt.when(a['expires_at'])}"
                         for a in summary["activations"]) or "none"
        # madre holding transitions the DB refused: the rows lag behind; say so
        held = any(u["Id"] == "vx11-madre.service" and "pending" in u.get("StatusText", "")
                   for u in shown)
        lag = " as last recorded (madre holds newer ones, see above)" if held else ""
        lines.append(f"db {summary['path']}: hijas {textfmt.counts(summary['hijas'])}{lag}; "
                     f"{summary['events']} events; activation windows {wins}")
        rot = summary.get("last_rotation")
        if rot:
            lines.append(f"last rotation {textfmt.relative(rot['finished_at'])}: "
                         f"{rot['archived']} archived, {rot['errors']} errors")
    else:
        lines.append(f"db {state.missing(cfg)}")
    emit(args, {"units": shown, "db": summary}, "\n".join(lines))
    return 0
