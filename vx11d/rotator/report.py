"""The rotation report: text for people, the ``rotations`` row, the node_exporter textfile."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from .. import metrics


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def text(rep: dict[str, Any]) -> str:
    """The five phases' figures, what was (or would be) done, and the errors."""
    p = rep["phases"]
    sc, ar, ag, rp = p["scan"], p["archive"], p["aggressive"], p["report"]
    mode = "DRY RUN (nothing changed)" if rep["dry_run"] else "rotation"
    lines = [
        f"vx11 rotate: {mode}, {rep['duration_seconds']:.2f}s",
        f"1 protect:    {len(p['protect']['patterns'])} hard-exclude patterns "
        f"({', '.join(p['protect']['patterns'])}); {p['protect']['kept_in_place']} "
        "entries kept in place",
        f"2 scan:       {len(sc['roots'])} roots, {sc['timestamp_dirs']} audit dirs: "
        f"{sc['due']} due, {sc['active']} active, {sc['future']} future (left alone), "
        f"{sc['ignored']} not timestamp names (left alone), {sc['stale_temps']} stale temps",
    ]
    if rep["dry_run"]:
        lines.append(f"3 archive:    {ar['would_archive']} would be archived or reused "
                     f"({ar['files']} files, {_mb(sum(d['bytes_in'] for d in ar['dirs']))})")
    else:
        lines.append(f"3 archive:    {ar['archived']} archived, {ar['reused']} existing "
                     f"archives reused, {ar['failed']} failed; {ar['verified']} verified, "
                     f"{ar['sources_removed']} sources removed; {_mb(ar['bytes_in'])} in, "
                     f"{_mb(ar['bytes_out'])} out")
    if ag["enabled"]:
        verb = "would delete" if rep["dry_run"] else "deleted"
        lines.append(f"4 aggressive: {verb} {ag['deleted']} archives older than "
                     f"{ag['limit_days']:g} days ({_mb(ag['bytes_freed'])})")
    else:
        lines.append("4 aggressive: not requested (--aggressive)")
    when = " (as now)" if rep["dry_run"] else ""
    lines.append(f"5 report:     {rp['active_dirs']} active dirs{when} "
                 f"({_mb(rp['active_bytes'])}), {rp['future_dirs']} future, "
                 f"{rp['due_dirs_left']} due but still there, "
                 f"{rp['archive_count']} archives ({_mb(rp['archive_bytes'])}), total "
                 f"{_mb(rp['total_bytes'])}")
    for root in sc["roots"]:
        for ig in root["ignored"]:
            lines.append(f"  left alone: {root['path']}/{ig['name']}: {ig['reason']}")
        for f in root["future"]:
            lines.append(f"  left alone: {root['path']}/{f}: timestamp in the future")
    for d in ar["dirs"]:
        for k in d["kept"]:
            lines.append(f"  kept in place: {d['root']}/{d['name']}/{k['rel']}: {k['reason']}")
    lines += [f"  {a}" for a in rep["actions"]]
    lines += [f"  ERROR {e}" for e in rep["errors"]]
    lines += [f"  NOT RECORDED {e}" for e in rep.get("not_recorded", [])]
    return "\n".join(lines)


def summary_fields(rep: dict[str, Any]) -> dict[str, Any]:
    """The counts and bytes of the journal's ``rotation_finished`` event."""
    p = rep["phases"]
    return {"dry_run": int(rep["dry_run"]), "aggressive": int(rep["aggressive"]),
            "archived": p["archive"]["archived"], "reused": p["archive"]["reused"],
            "failed": p["archive"]["failed"], "deleted": p["aggressive"]["deleted"],
            "bytes_in": p["archive"]["bytes_in"], "bytes_out": p["archive"]["bytes_out"],
            "active_dirs": p["report"]["active_dirs"],
            "archive_count": p["report"]["archive_count"],
            "total_bytes": p["report"]["total_bytes"], "errors": len(rep["errors"]),
            "duration_seconds": rep["duration_seconds"]}


def insert_row(conn: sqlite3.Connection, rep: dict[str, Any]) -> int:
    """The run's ``rotations`` row (inside the caller's transaction)."""
    s = summary_fields(rep)
    cur = conn.execute(
        "INSERT INTO rotations (started_at, finished_at, dry_run, aggressive, active_dirs, "
        "archived, deleted_archives, archive_count, bytes_in, bytes_out, total_bytes, errors, "
        "report) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (rep["started_at"], rep["finished_at"], s["dry_run"], s["aggressive"],
         s["active_dirs"], s["archived"], s["deleted"], s["archive_count"], s["bytes_in"],
         s["bytes_out"], s["total_bytes"], s["errors"],
         json.dumps(rep, sort_keys=True, default=str)))
    return int(cur.lastrowid or 0)


def registry(rep: dict[str, Any], last_success: float | None) -> CollectorRegistry:
    """The textfile metrics of one run (gauges: they describe the last run)."""
    reg = metrics.new_registry("rotate", process=False)
    s = summary_fields(rep)

    def gauge(name: str, doc: str, value: float) -> None:
        Gauge(name, doc, registry=reg).set(value)

    if last_success is not None:
        gauge("vx11_rotate_last_success_timestamp_seconds",
              "end of the last rotation that finished without errors", last_success)
    gauge("vx11_rotate_last_run_timestamp_seconds", "end of the last rotation",
          rep["finished_at"])
    gauge("vx11_rotate_duration_seconds", "duration of the last rotation",
          rep["duration_seconds"])
    gauge("vx11_rotate_dirs_archived", "audit dirs archived by the last rotation",
          s["archived"] + s["reused"])
    gauge("vx11_rotate_dirs_failed", "audit dirs the last rotation could not archive",
          s["failed"])
    gauge("vx11_rotate_archives_deleted", "old archives deleted by the last rotation",
          s["deleted"])
    gauge("vx11_rotate_input_bytes", "bytes of files archived by the last rotation",
          s["bytes_in"])
    gauge("vx11_rotate_output_bytes", "bytes of archives written by the last rotation",
          s["bytes_out"])
    gauge("vx11_rotate_errors", "errors in the last rotation", s["errors"])
    gauge("vx11_rotate_recorded", "1 when the last rotation's row reached the DB (0: the "
          "DB refused it; see the journal's rotation_not_recorded)",
          0 if rep.get("not_recorded") else 1)
    gauge("vx11_rotate_active_dirs", "audit dirs not yet due (future-dated ones not "
          "counted)", s["active_dirs"])
    gauge("vx11_rotate_archives", "archives in the archive dirs", s["archive_count"])
    gauge("vx11_rotate_stored_bytes", "bytes held by active dirs and archives",
          s["total_bytes"])
    return reg
