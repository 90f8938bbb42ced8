"""``vx11ctl db check|schema|migrate|backup|restore``."""

from __future__ import annotations

import argparse
import os
import time

from .. import config, db, dbfile, textfmt
from . import dbbackup
from .main import emit
from .state import missing, open_db


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="check, describe, create, back up or restore the shared "
                       "database")
    s = p.add_subparsers(dest="db_command", metavar="ACTION")
    c = s.add_parser("check", help="integrity_check and foreign_key_check (exit 1 on problems)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=check)
    m = s.add_parser("schema", help="write DB_SCHEMA (SQL) and DB_MAP (table owners) of the "
                     "existing database")
    m.add_argument("--out", required=True, help="directory to write into")
    m.set_defaults(func=schema)
    g = s.add_parser("migrate", help="create the database (also after a loss) or apply "
                     "pending migrations (the only command that creates it or changes its "
                     "schema)")
    g.set_defaults(func=migrate)
    dbbackup.add(s)


def _open(args: argparse.Namespace, readonly: bool, create: bool | None = None
          ) -> db.Database:
    cfg = config.load(args.config)
    return db.Database.from_config(cfg, readonly=readonly, create=create)


def check(args: argparse.Namespace) -> int:
    d = _open(args, readonly=True)
    if not os.path.exists(d.path):
        said = missing(config.load(args.config))
        emit(args, {"path": d.path, "ok": False, "problems": ["database file missing"],
                    "message": said}, said)
        return 1
    problems = db.check(d)
    kept = dbfile.kept_beside(d.path)
    text = f"{d.path}: ok" if not problems else "\n".join(problems)
    if kept:
        dbs = sum(k["replaced"] for k in kept)
        what = [textfmt.plural(dbs, "replaced database")] if dbs else []
        if len(kept) > dbs:
            what.append(textfmt.plural(len(kept) - dbs, "set-aside -wal/-shm file"))
        text += (f"\nkept beside it: {' and '.join(what)}, "
                 f"{textfmt.size(sum(k['bytes'] for k in kept))}, the oldest "
                 f"{textfmt.relative(min(kept[0]['mtime'], time.time()))} "
                 f"({os.path.basename(kept[0]['path'])}); nothing deletes them: remove "
                 "them once you no longer need the old data (docs/faults.md)")
    emit(args, {"path": d.path, "ok": not problems, "problems": problems,
                "kept": [{"path": k["path"], "files": k["files"], "bytes": k["bytes"],
                          "modified": textfmt.api_time(k["mtime"])} for k in kept]}, text)
    return 1 if problems else 0


def schema(args: argparse.Namespace) -> int:
    d = open_db(config.load(args.config))
    os.makedirs(args.out, exist_ok=True)
    for name, text in (("DB_SCHEMA", db.schema_sql(d)), ("DB_MAP", db.schema_map())):
        tmp = os.path.join(args.out, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(args.out, name))
    print(f"wrote {args.out}/DB_SCHEMA and {args.out}/DB_MAP")
    return 0


def migrate(args: argparse.Namespace) -> int:
    # The one place that creates a DB where one existed before (after a loss): an
    # operator's explicit act, never a daemon's (see docs/faults.md).
    d = _open(args, readonly=False, create=True)
    applied = db.apply_migrations(d)
    print(f"{d.path}: " + (f"applied {', '.join(applied)}" if applied else "up to date"))
    return 0
