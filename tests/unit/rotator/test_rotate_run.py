"""A whole rotation: age by name, dry run, aggressive, the lock, the report and textfile."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.rotate_support import (
    FUTURE,
    NOW,
    OLD,
    OLD_LABEL,
    RECENT,
    archive_members,
    audit_tree,
    make_cfg,
    tree_state,
    write_tree,
)
from vx11d import db
from vx11d.rotator import main as rmain
from vx11d.rotator import run


def populated(tmp_path: Path) -> Path:
    root = tmp_path / "audits"
    for name in (OLD, OLD_LABEL, RECENT, FUTURE):
        audit_tree(root, name)
    write_tree(root, {"notes/readme.txt": b"not an audit dir", "SCORECARD.json": b"{}",
                      "20260101T000000Z.txt": b"a file with a timestamp name"})
    return root


def test_age_comes_from_the_name_with_a_fixed_clock(tmp_path):
    root = populated(tmp_path)
    os.utime(root / RECENT, (0, 0))  # an ancient mtime changes nothing
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    rep = run.rotate(cfg.rotate, now=NOW)
    assert not rep["errors"], rep["errors"]
    sc = rep["phases"]["scan"]["roots"][0]
    assert sorted(sc["due"]) == sorted([OLD, OLD_LABEL])
    assert sc["active"] == [RECENT] and sc["future"] == [FUTURE]
    assert {i["name"] for i in sc["ignored"]} == {"notes", "20260101T000000Z.txt"}
    assert sc["protected"] == ["SCORECARD.json"]
    assert sorted(os.listdir(root / "archive")) == [f"{OLD}.tar.gz", f"{OLD_LABEL}.tar.gz"]
    for name in (RECENT, FUTURE, "notes", "SCORECARD.json"):
        assert (root / name).exists()
    # With keep_days=30 nothing more is due; with the clock 10 days on, RECENT is due
    # and FUTURE is still in the future.
    cfg30 = make_cfg(tmp_path, [{"path": str(root)}], keep_days=30)
    assert run.rotate(cfg30.rotate, now=NOW)["phases"]["scan"]["due"] == 0
    rep = run.rotate(cfg.rotate, now=NOW + 10 * 86400)
    assert rep["phases"]["scan"]["roots"][0]["due"] == [RECENT]


def test_dry_run_changes_nothing_and_says_what_a_real_run_does(tmp_path):
    root = populated(tmp_path)
    (root / "archive").mkdir()
    (root / "archive" / ".vx11-rotate-tmp.x.tar.gz").write_bytes(b"stale")
    (root / "archive" / "20250101T000000Z.tar.gz").write_bytes(b"old archive")
    before = tree_state(root)
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    dry = run.rotate(cfg.rotate, dry_run=True, aggressive=True, now=NOW)
    assert tree_state(root) == before, "dry run changed the tree"
    assert not dry["errors"]
    real = run.rotate(cfg.rotate, aggressive=True, now=NOW)
    assert not real["errors"], real["errors"]
    assert [a.removeprefix("would ") for a in dry["actions"]] == real["actions"]
    assert all(a.startswith("would ") for a in dry["actions"])
    assert tree_state(root) != before


def test_aggressive_deletes_only_archives_over_the_limit(tmp_path):
    root = tmp_path / "audits"
    arch = root / "archive"
    write_tree(arch, {"20250901T000000Z.tar.gz": b"141 days",
                      "20251001T000000Z_x.tar.gz": b"111",
                      "20251101T000000Z.tar.gz": b"80 days", "20260201T000000Z.tar.gz": b"fut",
                      "manual-backup.tar.gz": b"not a timestamp", "SCORECARD.json": b"{}",
                      "20250101T000000Z.tar.gz.bad-1": b"set aside"})
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    rep = run.rotate(cfg.rotate, now=NOW)
    assert len(os.listdir(arch)) == 7, "deleted without --aggressive"
    rep = run.rotate(cfg.rotate, aggressive=True, now=NOW)
    assert not rep["errors"]
    assert sorted(os.listdir(arch)) == sorted([
        "20251101T000000Z.tar.gz", "20250101T000000Z.tar.gz.bad-1", "20260201T000000Z.tar.gz",
        "SCORECARD.json", "manual-backup.tar.gz"])
    assert rep["phases"]["aggressive"]["deleted"] == 2
    assert rep["phases"]["aggressive"]["bytes_freed"] == len(b"141 days") + len(b"111")


def test_only_one_rotation_at_a_time(tmp_path):
    root = populated(tmp_path)
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    with run.run_lock(cfg.rotate.lock_file), pytest.raises(run.LockBusy):
        run.rotate(cfg.rotate, now=NOW)
    assert (root / OLD).exists()


def test_dry_run_needs_no_lock_file_and_a_foreign_one_still_locks(tmp_path):
    root = populated(tmp_path)
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    lock = Path(cfg.rotate.lock_file)
    run.rotate(cfg.rotate, dry_run=True, now=NOW)
    assert not lock.exists(), "a dry run created the lock file"
    run.rotate(cfg.rotate, now=NOW)
    assert lock.stat().st_mode & 0o777 == 0o644
    # a lock file made by root still locks for another user (flock on a read-only fd)
    base = Path("/tmp") / f"vx11-rotate-lock-{os.getpid()}"
    base.mkdir(mode=0o755)
    try:
        lock2 = base / "rotate.lock"
        with run.run_lock(str(lock2)):
            pass
        code = ("import sys; from vx11d.rotator import run\n"
                "with run.run_lock(sys.argv[1]): print('locked')")
        r = subprocess.run([sys.executable, "-c", code, str(lock2)], user=65534,
                           capture_output=True, text=True, check=False)
        assert r.returncode == 0 and r.stdout.strip() == "locked", r.stderr
        with run.run_lock(str(lock2)):
            r = subprocess.run([sys.executable, "-c", code, str(lock2)], user=65534,
                               capture_output=True, text=True, check=False)
            assert "LockBusy" in r.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_unusable_lock_path_is_a_clear_error(tmp_path):
    cfg = make_cfg(tmp_path, [{"path": str(populated(tmp_path))}],
                   lock_file=str(tmp_path / "afile" / "lock"))
    (tmp_path / "afile").write_text("not a dir")
    with pytest.raises(run.LockError, match="lock file"):
        run.rotate(cfg.rotate, now=NOW)


def test_two_workers_archive_in_parallel_processes(tmp_path):
    root = tmp_path / "audits"
    names = [f"202601{d:02d}T000000Z" for d in range(1, 9)]
    for n in names:
        audit_tree(root, n, n_files=30)
    cfg = make_cfg(tmp_path, [{"path": str(root)}], workers=2)
    rep = run.rotate(cfg.rotate, now=NOW)
    assert not rep["errors"], rep["errors"]
    assert rep["phases"]["archive"]["archived"] == 8 == rep["phases"]["archive"]["verified"]
    for n in names:
        assert f"{n}/logs/deep/x.json" in archive_members(root / "archive" / f"{n}.tar.gz")


def test_main_writes_report_row_and_textfile(tmp_path, capsys, monkeypatch):
    root = populated(tmp_path)
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    monkeypatch.setattr(run.time, "time", lambda: NOW)
    assert rmain.main(cfg, ["--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["phases"]["archive"]["archived"] == 2
    rows = db.Database(cfg.db.path).query("SELECT * FROM rotations")
    assert len(rows) == 1 and rows[0]["archived"] == 2 and rows[0]["errors"] == 0
    assert rows[0]["bytes_in"] > 0 and rows[0]["archive_count"] == 2
    prom = Path(cfg.rotate.textfile_dir) / "vx11_rotate.prom"
    text = prom.read_text()
    assert "vx11_rotate_last_success_timestamp_seconds" in text
    assert "vx11_rotate_dirs_archived 2.0" in text
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    # text output, and a dry run writes no row and no textfile
    mtime = prom.stat().st_mtime_ns
    assert rmain.main(cfg, ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "DRY RUN" in out and "5 report:" in out
    assert len(db.Database(cfg.db.path).query("SELECT * FROM rotations")) == 1
    assert prom.stat().st_mtime_ns == mtime


def test_main_with_errors_exits_1_and_keeps_last_success(tmp_path, capsys):
    root = populated(tmp_path)
    cfg = make_cfg(tmp_path, [{"path": str(root)}, {"path": str(tmp_path / "missing")}])
    assert rmain.main(cfg, []) == 1
    assert "ERROR root" in capsys.readouterr().out
    text = (Path(cfg.rotate.textfile_dir) / "vx11_rotate.prom").read_text()
    assert "vx11_rotate_errors 1.0" in text
    assert "vx11_rotate_last_success_timestamp_seconds" not in text


def test_lock_busy_exits_75(tmp_path, capsys):
    cfg = make_cfg(tmp_path, [{"path": str(populated(tmp_path))}])
    with run.run_lock(cfg.rotate.lock_file):
        assert rmain.main(cfg, []) == 75
        capsys.readouterr()
        assert rmain.main(cfg, ["--json"]) == 75  # with --json the error is JSON too
        err = json.loads(capsys.readouterr().out)
        assert err["error"] == "lock_busy" and err["exit_code"] == 75


@pytest.mark.parametrize("text,reason", [
    ("rotate:\n  hard_exclude: ['a/b']", "without '/'"),
    ("rotate:\n  hard_exclude: ['']", "non-empty"),
    ("rotate:\n  roots: [{path: /a}, {path: /a/}]", "listed twice"),
    ("rotate:\n  lock_file: rel.lock", "absolute"),
    ("rotate:\n  roots: [{path: /a, archive_dir: /x}, {path: /b, archive_dir: /x/}]",
     "share one archive_dir"),
    ("rotate:\n  roots: [{path: /a}, {path: /b, archive_dir: /a/archive}]",
     "share one archive_dir"),
])
def test_config_refusals(text, reason):
    from vx11d import config
    from vx11d.errors import ConfigError

    with pytest.raises(ConfigError, match=reason):
        config.parse(text, "/etc/vx11/vx11.yml")


def test_rotation_on_an_unwritable_db_is_reported_not_failed_and_loses_no_dir(
        tmp_path, capsys, monkeypatch):
    """Regression (issue 10): a DB the rotator could not open or write turned a good
    rotation into a failed unit (or a traceback, for an OS error on open); now the
    archives stand, the run is reported as not recorded, and the textfile says so."""
    root = populated(tmp_path)
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    (tmp_path / "afile").write_text("not a dir")
    cfg = dataclasses.replace(cfg, db=dataclasses.replace(
        cfg.db, path=str(tmp_path / "afile" / "vx11.db")))
    monkeypatch.setattr(run.time, "time", lambda: NOW)
    before = sorted(p.name for p in root.iterdir())
    assert rmain.main(cfg, []) == 0
    out = capsys.readouterr().out
    assert "NOT RECORDED database" in out and "Traceback" not in out
    archived = sorted(p.name for p in (root / "archive").iterdir())
    assert len(archived) == 2  # both due dirs archived and verified
    for name in before:  # every audit dir is either still there or in its archive
        assert (root / name).exists() or f"{name}.tar.gz" in archived
    text = (Path(cfg.rotate.textfile_dir) / "vx11_rotate.prom").read_text()
    assert "vx11_rotate_recorded 0.0" in text and "vx11_rotate_errors 0.0" in text
