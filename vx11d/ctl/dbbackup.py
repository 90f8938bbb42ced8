"""``vx11ctl db backup [FILE]`` and ``vx11ctl db restore FILE``: the only supported way to
copy the live database and to put a copy back (docs/faults.md).

A backup is one consistent snapshot of the live WAL database (SQLite's backup API in a
read transaction: the daemons keep writing meanwhile), self-contained (no ``-wal``),
checked with ``integrity_check``, fsynced and renamed into place, with the mode and
group of the live file.

A restore never lets SQLite apply a WAL to a file it does not belong to:

1. the backup must be sound (``integrity_check``, ``foreign_key_check``, the vx11
   schema, no migration newer than this vx11d), else exit 1 and the live DB untouched;
2. it is copied to a temporary file beside the live DB (same filesystem), checked again;
3. the units that use the DB and are active are stopped (with no systemd, none); a
   process still holding the DB open refuses the restore;
4. under the DB directory's lock the old DB is read (for the report), checkpointed and
   kept as ``<db>.replaced-<time>`` (a hard link: no copy), its ``-wal``/``-shm`` moved
   aside with it, and the copy renamed over the path (then the directory fsynced);
5. migrations are applied, the units started again (madre first: its reconcile
   re-creates the rows of hijas systemd still runs), and a report printed.
"""

from __future__ import annotations

import argparse
import glob
import os
import sqlite3
import time
from contextlib import suppress
from typing import Any

from .. import config, db, dbfile, textfmt
from ..errors import DbMissing, Vx11Error
from .main import emit
from .units import systemctl

# Units that open the DB, in the order they start again (madre's reconcile first).
DB_UNITS = ["vx11-madre.service", "vx11-reaper.service", "vx11-gateway.socket",
            "vx11-gateway.service", "vx11-rotate.timer", "vx11-backup.timer"]
# Stopped in this order: the entry point first, so nothing new arrives meanwhile.
STOP_ORDER = ["vx11-gateway.socket", "vx11-gateway.service", "vx11-rotate.timer",
              "vx11-rotate.service", "vx11-backup.timer", "vx11-backup.service",
              "vx11-reaper.service",
              "vx11-madre.service"]
TABLES = ["spawner_hijas", "events", "activations", "rotations", "reaper_actions"]
BACKUP_DIR = "backups"


class RestoreRefused(Vx11Error):
    """A backup or restore that was not done (exit 1): the live DB is untouched."""


def add(s: argparse._SubParsersAction) -> None:
    b = s.add_parser("backup", help="a consistent copy of the live database (also while "
                     "the daemons write), integrity-checked, mode and group of the live file")
    b.add_argument("file", nargs="?", metavar="FILE",
                   help=f"where to write it (default: {BACKUP_DIR}/vx11-<UTC time>.db "
                   "beside the database)")
    b.add_argument("--keep", type=int, metavar="N", help="then keep only the N newest "
                   f"backups in the default directory ({BACKUP_DIR}/ beside the database)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=backup)
    r = s.add_parser("restore", help="put a backup back as the live database: refuses an "
                     "unsound file, stops and restarts the daemons, reports what the "
                     "backup lacks")
    r.add_argument("file", metavar="FILE", help="a file written by `vx11ctl db backup`")
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=restore)


def _stamp(ts: float | None = None) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ts))


# --- backup -------------------------------------------------------------------------

def backup(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    path = os.path.abspath(cfg.db.path)
    if args.keep is not None and (args.keep < 1 or args.file):
        raise RestoreRefused("--keep takes a number of at least 1 and only applies to the "
                             "default backup directory (no FILE)")
    if not os.path.exists(path):
        raise DbMissing(f"{path}: no database there to back up; check db.path in {cfg.path}")
    bdir = os.path.join(os.path.dirname(os.path.abspath(path)), BACKUP_DIR)
    dest = os.path.abspath(args.file) if args.file else \
        os.path.join(bdir, f"vx11-{_stamp()}.db")
    if not args.file:
        os.makedirs(bdir, mode=0o770, exist_ok=True)
        gid = dbfile.group_of(path)
        if gid is not None:
            with suppress(PermissionError):
                os.chown(bdir, -1, gid)
    if os.path.isdir(dest):
        dest = os.path.join(dest, f"vx11-{_stamp()}.db")
    if _same_db(dest, path):
        raise RestoreRefused(f"{dest} is the live database (or its -wal/-shm); give "
                             "another FILE")
    t0 = time.monotonic()
    mode, gid = _live_mode(path)
    tmp = dbfile.temp_beside(dest, "backup")
    try:
        src = dbfile.open_read_only(path, timeout=cfg.db.busy_timeout_ms / 1000)
    except sqlite3.Error as e:
        raise RestoreRefused(f"{path}: cannot be read as a database ({e}); no backup "
                             "written") from e
    try:
        bad = dbfile.write_copy(src, tmp, mode=mode, gid=gid)
    except sqlite3.Error as e:
        raise RestoreRefused(f"{path}: the copy failed ({e}); no backup written") from e
    finally:
        src.close()
    if bad:
        dbfile.remove_quietly(tmp)
        raise RestoreRefused(f"{path}: the live database is not sound ({bad[0]}); no backup "
                             "written (run `vx11ctl db check`)")
    dbfile.install(tmp, dest)
    rows = _counts(dest)
    pruned = _prune(bdir, args.keep) if args.keep else []
    took = time.monotonic() - t0
    emit(args, {"ok": True, "file": dest, "bytes": os.path.getsize(dest), "rows": rows,
                "mode": f"{mode:04o}", "group": dbfile.group_name(gid), "seconds": round(took, 3),
                "pruned": pruned},
         f"backup {dest}: {textfmt.size(os.path.getsize(dest))}, "
         f"{textfmt.plural(rows.get('spawner_hijas', 0), 'hija')}, "
         f"{textfmt.plural(rows.get('events', 0), 'event')}, "
         f"integrity ok, mode {mode:04o} group {dbfile.group_name(gid)}, "
         f"{textfmt.duration(took)}" + (f"; removed {len(pruned)} older" if pruned else ""))
    return 0


def _same_db(f: str, path: str) -> bool:
    """Is ``f`` the live DB at ``path`` or one of its sidecars (by name or by inode)?"""
    a = os.path.abspath(f)
    if a in (path, *(path + s for s in dbfile.SIDECARS)):
        return True
    ident = dbfile.identity(a)
    return ident is not None and ident == dbfile.identity(path)


def _live_mode(path: str) -> tuple[int, int | None]:
    try:
        st = os.stat(path)
    except OSError:
        return 0o660, dbfile.group_of(path)
    return st.st_mode & 0o777, st.st_gid


def _prune(bdir: str, keep: int) -> list[str]:
    old = sorted(glob.glob(os.path.join(bdir, "vx11-*.db")))[:-keep]
    for p in old:
        dbfile.remove_quietly(p)
    return old


def _counts(path: str) -> dict[str, int]:
    try:
        conn = dbfile.open_read_only(path)
    except sqlite3.Error:
        return {}
    try:
        return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # noqa: S608
                for t in TABLES if _has_table(conn, t)}
    finally:
        conn.close()


def _has_table(conn: sqlite3.Connection, t: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (t,)).fetchone() is not None


# --- restore ------------------------------------------------------------------------

def restore(args: argparse.Namespace) -> int:
    cfg = config.load(args.config)
    path = os.path.abspath(cfg.db.path)
    src = args.file
    if _same_db(src, path):
        raise RestoreRefused(f"{src} is the live database itself; give a backup file")
    known = [n for n, _ in db.MIGRATIONS]
    bad = dbfile.problems(src, known=known)
    if bad:
        raise RestoreRefused(f"{src}: refused, not a sound vx11 database: {bad[0]}; the "
                             f"live database {path} was not touched")
    if not os.path.isdir(os.path.dirname(path)):
        raise DbMissing(f"{os.path.dirname(path)}: the database directory is missing; "
                        f"check db.path in {cfg.path}")
    mode, gid = _live_mode(path)
    tmp = dbfile.temp_beside(path, "restore")
    try:
        s = dbfile.open_read_only(src)
        try:
            bad = dbfile.write_copy(s, tmp, mode=mode, gid=gid)
        finally:
            s.close()
    except sqlite3.Error as e:
        raise RestoreRefused(f"{src}: could not copy it beside {path} ({e}); the live "
                             "database was not touched") from e
    if bad:
        dbfile.remove_quietly(tmp)
        raise RestoreRefused(f"{src}: its copy is not sound ({bad[0]}); the live database "
                             f"{path} was not touched")
    report: dict[str, Any] = {"ok": False, "file": os.path.abspath(src), "path": path}
    stopped: list[str] = []
    try:
        _stop_units(stopped)
        report["stopped"] = stopped
        busy = dbfile.holders(path)
        if busy:
            who = ", ".join(f"pid {p} ({c})" for p, c in busy[:5])
            raise RestoreRefused(f"{path} is still open in {who}: stop it and run the "
                                 "restore again; the live database was not touched")
        with dbfile.dir_lock(path, wait=10) as locked:
            if not locked:
                raise RestoreRefused(f"{os.path.dirname(path)}: another restore or a "
                                     "daemon adopting a file holds the directory lock; "
                                     "try again")
            old, old_error = _read_old(path)
            new = _ids(tmp)
            report["replaced_kept_as"] = _keep_old(path)
            dbfile.install(tmp, path)
        report["old_unreadable"] = old_error
        report["not_in_backup"] = {t: sorted(old.get(t, set()) - new.get(t, set()),
                                             key=str) for t in TABLES}
        d = db.Database.from_config(cfg, create=False)
        try:
            report["migrations_applied"] = db.apply_migrations(d)
        finally:
            d.close()
    except BaseException:
        dbfile.remove_quietly(tmp)
        if stopped:
            _start_units(stopped)
        raise
    report["started"] = _start_units(stopped)
    report["recreated_from_systemd"] = _present(path, report["not_in_backup"]["spawner_hijas"])
    checked = dbfile.problems(path, known=known)
    report["check"] = checked or ["ok"]
    report["ok"] = not checked
    emit(args, report, _text(report))
    return 0 if not checked else 1


def _stop_units(stopped: list[str]) -> None:
    """Stop the active DB units (none without a booted systemd), listed in ``stopped``
    first, so that a stop that fails half-way still starts them all again."""
    if not os.path.isdir("/run/systemd/system"):
        return
    for u in STOP_ORDER:
        r = systemctl("is-active", "--quiet", u, check=False)
        if r.returncode == 0:
            stopped.append(u)
    if stopped:
        systemctl("stop", *stopped)


def _start_units(stopped: list[str]) -> list[str]:
    started = []
    for u in DB_UNITS:
        if u in stopped:
            r = systemctl("start", u, check=False)
            if r.returncode == 0:
                started.append(u)
    return started


def _read_old(path: str) -> tuple[dict[str, set[Any]], str]:
    """The row ids of the DB about to be replaced (its own WAL folded in), and why they
    could not be read ("" when they could). Nobody else has the file open now."""
    if not os.path.exists(path):
        return {}, ""
    try:
        conn = sqlite3.connect(dbfile.uri(path, mode="rw"), uri=True, isolation_level=None)
    except sqlite3.Error as e:
        return {}, str(e)
    try:
        ids = _ids_of(conn)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return ids, ""
    except sqlite3.Error as e:
        return {}, str(e)
    finally:
        conn.close()


def _ids(path: str) -> dict[str, set[Any]]:
    conn = dbfile.open_read_only(path)
    try:
        return _ids_of(conn)
    finally:
        conn.close()


def _ids_of(conn: sqlite3.Connection) -> dict[str, set[Any]]:
    return {t: {r[0] for r in conn.execute(f"SELECT id FROM {t}")}  # noqa: S608
            for t in TABLES if _has_table(conn, t)}


def _keep_old(path: str) -> str:
    """Keep the DB being replaced as ``<path>.replaced-<time>`` (a hard link) with its
    ``-wal``/``-shm`` renamed beside it (the names SQLite looks for), so nothing of it
    is lost and nothing of it stays at the path. "" when there was none."""
    if not os.path.exists(path):
        for s in dbfile.SIDECARS:  # sidecars of a file deleted earlier: never applied
            if os.path.exists(path + s):
                os.rename(path + s, f"{path}{s}{dbfile.STALE}{_stamp()}")
        return ""
    kept = f"{path}{dbfile.REPLACED}{_stamp()}"
    n = 1
    while os.path.exists(kept):
        n += 1
        kept = f"{path}{dbfile.REPLACED}{_stamp()}-{n}"
    os.link(path, kept)
    for s in dbfile.SIDECARS:
        if os.path.exists(path + s):
            os.rename(path + s, kept + s)
    return kept


def _present(path: str, ids: list[str]) -> list[str]:
    if not ids:
        return []
    conn = dbfile.open_read_only(path)
    try:
        have = {r[0] for r in conn.execute("SELECT id FROM spawner_hijas")}
    finally:
        conn.close()
    return [i for i in ids if i in have]


def _text(r: dict[str, Any]) -> str:
    lines = [f"restored {r['path']} from {r['file']}"]
    if r.get("stopped"):
        lines.append(f"stopped {', '.join(r['stopped'])}; started again: "
                     f"{', '.join(r.get('started', [])) or 'none'}")
    if r.get("replaced_kept_as"):
        lines.append(f"the replaced database is kept as {r['replaced_kept_as']}")
    if r.get("old_unreadable"):
        lines.append(f"the replaced database could not be read ({r['old_unreadable']}): "
                     "what it had beyond the backup is not listed")
    missing = r.get("not_in_backup", {})
    parts = [f"{len(v)} {t}" for t, v in missing.items() if v]
    lines.append("not in the backup: " + (", ".join(parts) if parts else "nothing"))
    hijas = missing.get("spawner_hijas", [])
    if hijas:
        back = set(r.get("recreated_from_systemd", []))
        gone = [h for h in hijas if h not in back]
        lines.append(f"hijas not in the backup: {len(back)} re-created from systemd"
                     + (f" ({', '.join(sorted(back)[:10])})" if back else "")
                     + f", {len(gone)} not running any more"
                     + (f" ({', '.join(gone[:10])}{', ...' if len(gone) > 10 else ''})"
                        if gone else ""))
    applied = r.get("migrations_applied") or []
    lines.append(f"migrations applied: {', '.join(applied) if applied else 'none needed'}")
    lines.append("db check: " + "; ".join(r.get("check", [])))
    return "\n".join(lines)
