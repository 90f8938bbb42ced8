"""``vx11ctl logs`` and ``vx11ctl scorecard``: reading the journal, and hygiene checks."""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import time

from .. import config, db, hijas
from ..errors import ConfigError, DbError, Vx11Error
from . import credcheck, hygiene
from .main import emit
from .reapercmd import scan_report
from .units import show, systemctl, unit_names

COMPONENTS = ("gateway", "madre", "reaper", "rotate", "hermes")


def register(sub: argparse._SubParsersAction) -> None:
    lg = sub.add_parser("logs", help="the daemons' journal (journalctl with vx11 filters)")
    lg.add_argument("component", nargs="?", choices=COMPONENTS,
                    help="one daemon (default: all vx11 units)")
    lg.add_argument("--event", help="only entries with VX11_EVENT=EVENT")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing new entries")
    lg.add_argument("-n", "--lines", type=int, default=50,
                    help="how many recent entries (default 50)")
    lg.add_argument("--since", help="journalctl --since (e.g. '1 hour ago')")
    lg.add_argument("--json", action="store_true", help="one JSON object per entry")
    lg.add_argument("--directory", metavar="DIR",
                    help="read journal files in DIR instead of this host's journal, e.g. "
                         "the collector's /var/log/journal/remote (every host's entries)")
    lg.add_argument("--host", help="only entries from this host (_HOSTNAME)")
    lg.set_defaults(func=logs)
    sc = sub.add_parser("scorecard", help="hygiene checks, written to SCORECARD.json")
    sc.add_argument("--out", default=None,
                    help="directory for SCORECARD.json (default: the directory of the "
                    "config's db.path, /var/lib/vx11 out of the box)")
    sc.add_argument("--json", action="store_true")
    sc.set_defaults(func=scorecard)


def journalctl_args(args: argparse.Namespace) -> list[str]:
    """The journalctl command line for ``vx11ctl logs`` (matches only, never a shell)."""
    argv = ["journalctl", "--no-pager", "-n", str(max(0, args.lines))]
    if args.directory:
        if not os.path.isdir(args.directory):
            raise ConfigError("(command line)", "--directory",
                              f"{args.directory} is not a directory of journal files")
        argv.append(f"--directory={args.directory}")
    if args.component:
        argv += ["-u", f"vx11-{args.component}.service"]
    else:
        argv += ["-u", "vx11-*", "-u", "vx11.target"]
    if args.event:
        if not args.event.replace("_", "").isalnum():
            raise ConfigError("(command line)", "--event", "letters, digits and _ only")
        argv.append(f"VX11_EVENT={args.event}")
    if args.host:
        if not all(c.isalnum() or c in "-._" for c in args.host):
            raise ConfigError("(command line)", "--host", "a host name: letters, digits, -._")
        argv.append(f"_HOSTNAME={args.host}")
    if args.since:
        argv += ["--since", args.since]
    if args.follow:
        argv.append("-f")
    argv += ["-o", "json" if args.json else "short-iso"]
    return argv


def logs(args: argparse.Namespace) -> int:
    return subprocess.run(journalctl_args(args), check=False).returncode


def _check(name: str, ok: bool, detail: str) -> dict[str, object]:
    return {"name": name, "ok": bool(ok), "detail": detail}


def run_checks(config_path: str | None) -> list[dict[str, object]]:
    """The hygiene checks: config, DB, units, TTLs, windows, token, zombies."""
    checks: list[dict[str, object]] = []
    try:
        cfg = config.load(config_path)
    except ConfigError as e:
        return [_check("config_valid", False, str(e))]
    checks.append(_check("config_valid", True, cfg.path))
    now = time.time()
    if os.path.exists(cfg.db.path):
        d = db.Database.from_config(cfg, readonly=True)
        try:
            problems = db.check(d)
            checks.append(_check("db_integrity", not problems, "; ".join(problems) or "ok"))
            no_ttl = d.query("SELECT count(*) FROM spawner_hijas WHERE status IN "  # noqa: S608
                             + hijas.LIVE_SQL + " AND ttl_s <= 0")[0][0]
            checks.append(_check("hijas_have_ttl", no_ttl == 0, f"{no_ttl} without a TTL"))
            grace = cfg.madre.backstop_grace + 30
            overdue = d.query("SELECT id FROM spawner_hijas WHERE status = ? AND "
                              "expires_at < ?", (hijas.HijaStatus.RUNNING.value, now - grace))
            checks.append(_check("no_overdue_hijas", not overdue,
                                 f"{len(overdue)} running past expiry + {grace:g}s"
                                 + (": " + ", ".join(r[0] for r in overdue[:10])
                                    if overdue else "")))
            long_windows = d.query("SELECT count(*) FROM activations WHERE ended_at IS NULL "
                                   "AND expires_at - created_at > ?",
                                   (cfg.madre.max_activation + 1,))[0][0]
            checks.append(_check("activations_bounded", long_windows == 0,
                                 f"{long_windows} live windows longer than "
                                 f"{cfg.madre.max_activation:g}s"))
            if cfg.rotate.roots:
                last = d.query("SELECT max(finished_at) FROM rotations WHERE errors = 0 "
                               "AND dry_run = 0")[0][0]
                made = d.query("SELECT min(applied_at) FROM schema_migrations")[0][0]
                checks.append(hygiene.last_rotation(last, now, since=made))
        except DbError as e:
            checks.append(_check("db_integrity", False, str(e)))
        finally:
            d.close()
    else:
        checks.append(_check("db_integrity", False, f"{cfg.db.path} does not exist"))
    units = show(unit_names())
    failed = [u["Id"] for u in units if u.get("ActiveState") == "failed"]
    checks.append(_check("no_failed_units", not failed, ",".join(failed) or "none failed"))
    checks.append(credcheck.modes(cfg.gateway))
    checks.append(credcheck.admins(cfg.gateway, now))
    listen = systemctl("show", "-p", "Listen", "vx11-gateway.socket", check=False)
    creds = systemctl("show", "-p", "LoadCredential", "vx11-gateway.service", check=False)
    checks.append(credcheck.tls_or_loopback(
        cfg.gateway, credcheck.listen_addresses(listen.stdout if listen.returncode == 0
                                                else ""),
        "tls.crt" in creds.stdout and "tls.key" in creds.stdout))
    checks += hygiene.leak_checks(cfg)
    checks.append(hygiene.audit_size(cfg))
    checks.append(hygiene.rotate_timer())
    checks.append(hygiene.cgroup_hierarchy())
    try:  # the reaper's own scanner: one /proc parser in the project
        zombies = int(scan_report(config_path)["zombies"])
        checks.append(_check("zombies_low", zombies < 10, f"{zombies} zombie processes"))
    except Vx11Error as e:
        checks.append(_check("zombies_low", False, str(e)))
    return checks


def scorecard_dir(args: argparse.Namespace) -> str:
    """Where SCORECARD.json goes: ``--out``, else beside the config's database."""
    if args.out:
        return args.out
    try:
        cfg = config.load(args.config)
    except ConfigError as e:
        raise ConfigError(e.path, e.key, f"{e.reason} (SCORECARD.json goes beside db.path; "
                          "give --out DIR to write it anyway)") from e
    return os.path.dirname(os.path.abspath(cfg.db.path))


def scorecard(args: argparse.Namespace) -> int:
    out = scorecard_dir(args)
    checks = run_checks(args.config)
    card = {"generated_at": time.time(), "host": socket.gethostname(),
            "ok": all(c["ok"] for c in checks), "checks": checks}
    if args.out:
        os.makedirs(out, exist_ok=True)  # asked for by name
    elif not os.path.isdir(out):
        raise Vx11Error(f"{out}: no such directory for SCORECARD.json (the state dir of "
                        "db.path; give --out DIR to write elsewhere)")
    path = os.path.join(out, "SCORECARD.json")
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(card, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    text = "\n".join(f"{'ok  ' if c['ok'] else 'FAIL'} {c['name']}"
                     + (f": {c['detail']}" if c["detail"] else "")
                     for c in checks) + f"\nwrote {path}"
    emit(args, card, text)
    return 0 if card["ok"] else 1
