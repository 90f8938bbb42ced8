"""``vx11d rotate [--dry-run] [--aggressive] [--json]``: one rotation, then exit.

The wiring: config in, lock, the five phases (:mod:`.run`), then the report to stdout,
a ``rotations`` row, a ``rotation_finished`` journal event and the node_exporter
textfile. Exit 0 when clean, 1 when some dir failed (the unit shows failed and the
alert fires), 75 when another run holds the lock.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from .. import journal, metrics
from ..config import Config
from ..db import Database, record_event
from ..degraded import CAUSES, DB_FAULTS, cause_of
from . import report, run

EX_TEMPFAIL = 75
log = logging.getLogger("vx11.rotate")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vx11d rotate", description="Archive old audit dirs.")
    p.add_argument("--dry-run", action="store_true",
                   help="change nothing; print exactly what a real run would do")
    p.add_argument("--aggressive", action="store_true",
                   help="also delete archives older than rotate.aggressive_days")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p.parse_args(argv)


def main(cfg: Config, argv: list[str]) -> int:
    """Run one rotation with ``cfg``; the report goes to stdout."""
    args = parse_args(argv)
    rc = cfg.rotate
    if not rc.roots:
        log.warning("no rotate.roots configured in %s; nothing to do", cfg.path)
    try:
        rep = run.rotate(rc, dry_run=args.dry_run, aggressive=args.aggressive)
    except run.LockBusy as e:
        journal.event(log, "rotation_skipped", "%s", e, level=logging.WARNING)
        if args.json:
            print(json.dumps({"ok": False, "error": "lock_busy", "message": str(e),
                              "exit_code": EX_TEMPFAIL}, sort_keys=True))
        else:
            print(f"vx11d rotate: {e}", file=sys.stderr)
        return EX_TEMPFAIL
    run.fault("report")
    if not args.dry_run:
        record(cfg, rep)
    fields = report.summary_fields(rep)
    if rep.get("not_recorded"):
        journal.event(log, "rotation_not_recorded", "rotation done but not recorded: %s "
                      "(its figures are in this journal's rotation_finished entry)",
                      "; ".join(rep["not_recorded"]), level=logging.ERROR)
    for e in rep["errors"]:
        journal.event(log, "rotation_error", "%s", e, level=logging.ERROR)
    journal.event(log, "rotation_finished",
                  "rotation finished%s: %d archived, %d reused, %d failed, %d archives "
                  "deleted, %d bytes in, %d bytes out, %d errors",
                  " (dry run)" if args.dry_run else "", fields["archived"], fields["reused"],
                  fields["failed"], fields["deleted"], fields["bytes_in"],
                  fields["bytes_out"], fields["errors"],
                  level=logging.ERROR if rep["errors"] else logging.INFO, **fields)
    if args.json:
        print(json.dumps(rep, indent=2, sort_keys=True, default=str))
    else:
        print(report.text(rep))
    return 1 if rep["errors"] else 0


def record(cfg: Config, rep: dict[str, Any]) -> None:
    """The ``rotations`` row, an ``events`` row and the textfile.

    A DB or textfile that cannot be written (read-only or full state, DB missing) does
    not make the rotation a failure: the archives are written and verified, no audit
    dir is lost. It is reported instead (``rep["not_recorded"]``, the journal's
    ``rotation_not_recorded``, ``vx11_rotate_recorded 0`` in the textfile)."""
    last_success = rep["finished_at"] if not rep["errors"] else None
    rep["not_recorded"] = []
    try:
        db = Database.from_config(cfg, migrate=True)
        try:
            def write(conn: Any) -> float | None:
                report.insert_row(conn, rep)
                record_event(conn, "rotate", "rotation_finished",
                             **report.summary_fields(rep))
                row = conn.execute("SELECT max(finished_at) FROM rotations WHERE errors = 0 "
                                   "AND dry_run = 0").fetchone()
                return row[0] if row else None

            last_success = db.write(write)
        finally:
            db.close()
    except DB_FAULTS as e:
        rep["not_recorded"].append(f"database {cfg.db.path}: {CAUSES[cause_of(e, cfg.db.path)]}"
                                   f" ({e})")
    path = os.path.join(cfg.rotate.textfile_dir, "vx11_rotate.prom")
    try:
        metrics.write_textfile(report.registry(rep, last_success), path)
    except OSError as e:
        rep["not_recorded"].append(f"textfile {path}: {e.strerror or e}")
