"""Regression tests for the rotator defects found by adversarial testing (issue 14):
newline names, dry run vs real run with --aggressive, counts, and the failing path."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.rotate_support import FUTURE, NOW, OLD, RECENT, audit_tree, make_cfg, write_tree
from vx11d.rotator import names, report, run

VX11D = os.path.join(os.path.dirname(sys.executable), "vx11d")
ANCIENT = "20200101T000000Z"  # ~2,200 days before NOW: due, and older than aggressive_days


def test_name_ending_in_a_newline_is_not_a_timestamp(tmp_path):
    assert names.parse(OLD) is not None
    assert names.parse(OLD + "\n") is None
    assert names.parse_archive(OLD + "\n.tar.gz") is None
    assert names.parse("2026010٣T120000Z") is None  # a non-ASCII digit
    root = tmp_path / "audits"
    audit_tree(root, OLD + "\n")
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    rep = run.rotate(cfg.rotate, now=NOW)
    sc = rep["phases"]["scan"]["roots"][0]
    assert sc["due"] == [] and [i["name"] for i in sc["ignored"]] == [OLD + "\\n"]
    assert (root / (OLD + "\n")).is_dir()  # left alone, not archived
    assert not (root / "archive" / (OLD + "\n.tar.gz")).exists()


def test_every_name_in_the_report_is_escaped_one_line_each(tmp_path):
    root = tmp_path / "audits"
    audit_tree(root, OLD)
    os.mkfifo(root / OLD / "odd\nfifo")  # kept in place, named in the report
    write_tree(root, {"x\ny": b"not an audit name"})
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    rep = run.rotate(cfg.rotate, now=NOW)
    text = report.text(rep)
    kept_lines = [ln for ln in text.splitlines() if ln.startswith("  kept in place")]
    assert kept_lines and all("odd\\nfifo" in ln for ln in kept_lines), text
    for line in text.splitlines():  # no line starts with a fragment of a split name
        assert not line.startswith(("fifo", "y:")), text
    dumped = json.dumps(rep)
    assert "odd\\\\nfifo" in dumped and "odd\\nfifo" not in dumped.replace("\\\\n", "")
    assert all("\n" not in a for a in rep["actions"] + rep["errors"])


def aggressive_tree(tmp_path: Path) -> tuple[Path, object]:
    root = tmp_path / "audits"
    for name in (ANCIENT, OLD, RECENT, FUTURE):
        audit_tree(root, name)
    # an old archive from an earlier run: the only thing --aggressive may delete
    write_tree(root, {"archive/20190101T000000Z.tar.gz": b"old archive bytes"})
    cfg = make_cfg(tmp_path, [{"path": str(root)}], workers=2)
    return root, cfg


def test_dry_run_actions_equal_the_real_run_with_aggressive(tmp_path):
    root, cfg = aggressive_tree(tmp_path)
    dry = run.rotate(cfg.rotate, dry_run=True, aggressive=True, now=NOW)
    real = run.rotate(cfg.rotate, dry_run=False, aggressive=True, now=NOW)
    assert not real["errors"], real["errors"]
    would = [a.removeprefix("would ") for a in dry["actions"]]
    assert all(a.startswith("would ") for a in dry["actions"])
    assert would == real["actions"]
    assert dry["phases"]["aggressive"]["deleted"] == real["phases"]["aggressive"]["deleted"] == 1
    # the archive made in this run from a dir older than aggressive_days is kept
    assert (root / "archive" / f"{ANCIENT}.tar.gz").is_file()
    assert not (root / ANCIENT).exists()
    assert not (root / "archive" / "20190101T000000Z.tar.gz").exists()


def test_archive_reused_after_a_kill_is_not_deleted_by_the_same_aggressive_run(tmp_path):
    """kill -9 after the rename, before the source goes; the next --aggressive run reuses
    the archive, removes the source, and must not then delete that archive."""
    name = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - 2000 * 86400))
    root = tmp_path / "audits"
    audit_tree(root, name)
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    env = {**os.environ, "VX11_CONFIG": cfg.path, run.FAULT_ENV: "archive_renamed"}
    killed = subprocess.run([VX11D, "rotate"], env=env, capture_output=True, timeout=120,
                            start_new_session=True)
    assert killed.returncode == -9
    assert (root / "archive" / f"{name}.tar.gz").exists() and (root / name).exists()
    env.pop(run.FAULT_ENV)

    def rotate(*flags: str) -> dict:
        r = subprocess.run([VX11D, "rotate", "--aggressive", "--json", *flags], env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout)

    dry, real = rotate("--dry-run"), rotate()
    assert [a.removeprefix("would ") for a in dry["actions"]] == real["actions"]
    assert real["phases"]["archive"]["reused"] == 1
    assert real["phases"]["aggressive"]["deleted"] == 0
    assert (root / "archive" / f"{name}.tar.gz").exists() and not (root / name).exists()


def test_future_dirs_are_not_counted_as_active(tmp_path):
    root = tmp_path / "audits"
    for name in (FUTURE, "20991231T000000Z"):
        audit_tree(root, name)
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    rep = run.rotate(cfg.rotate, now=NOW)
    assert rep["phases"]["scan"]["active"] == 0 and rep["phases"]["scan"]["future"] == 2
    tot = rep["phases"]["report"]
    assert tot["active_dirs"] == 0 and tot["future_dirs"] == 2 and tot["dir_bytes"] > 0
    assert "0 active dirs" in report.text(rep) and "2 future" in report.text(rep)
    reg = report.registry(rep, None)
    assert reg.get_sample_value("vx11_rotate_active_dirs") == 0


@pytest.fixture
def shared_tmp():
    """A dir another user can reach (pytest's tmp_path sits under a 0700 dir)."""
    d = Path(tempfile.mkdtemp(prefix="vx11t-rot-", dir="/tmp"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_archive_dir_not_writable_is_named_as_the_failing_path(shared_tmp):
    tmp_path = shared_tmp
    root = tmp_path / "audits"
    audit_tree(root, OLD)
    (root / "archive").mkdir()
    os.chmod(root / "archive", 0o2750)
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    code = ("import sys\nfrom vx11d.config import load\nfrom vx11d.rotator import run\n"
            f"rep = run.rotate(load(sys.argv[1]).rotate, now={NOW})\n"
            "print('\\n'.join(rep['errors']))\n")
    if os.geteuid() == 0:  # root ignores modes: check as an unprivileged user
        os.chown(tmp_path, 65534, 65534)
        for dirpath, dirs, files in os.walk(tmp_path):
            for n in dirs + files:
                os.lchown(os.path.join(dirpath, n), 65534, 65534)
        os.chown(root / "archive", 0, 65534)  # as a root run of today's main left it
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                sys.executable, "-c", code, cfg.path]
    else:
        argv = [sys.executable, "-c", code, cfg.path]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])})
    assert r.returncode == 0, r.stderr
    assert f"archive dir {root}/archive: not writable" in r.stdout, r.stdout
    assert (root / OLD).is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run as root and as another user")
def test_a_root_run_creates_the_archive_dir_for_the_service_user(shared_tmp):
    tmp_path = shared_tmp
    root = tmp_path / "audits"
    audit_tree(root, OLD)
    audit_tree(root, ANCIENT)
    os.chmod(tmp_path, 0o755)
    os.chown(root, 65534, 65534)
    os.chmod(root, 0o2770)
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    os.chmod(tmp_path / "state", 0o777)
    old_umask = os.umask(0o022)
    try:
        rep = run.rotate(cfg.rotate, now=NOW - 20 * 86400 + 3600)  # only ANCIENT is due
    finally:
        os.umask(old_umask)
    assert not rep["errors"], rep["errors"]
    st = os.stat(root / "archive")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o2770)
    a = os.stat(root / "archive" / f"{ANCIENT}.tar.gz")
    assert (a.st_uid, a.st_gid) == (65534, 65534)
    for dirpath, dirs, files in os.walk(root / OLD):
        for n in [dirpath, *(os.path.join(dirpath, x) for x in dirs + files)]:
            os.lchown(n, 65534, 65534)
    code = ("import sys\nfrom vx11d.config import load\nfrom vx11d.rotator import run\n"
            f"rep = run.rotate(load(sys.argv[1]).rotate, now={NOW})\n"
            "print(rep['errors'], rep['phases']['archive']['archived'])\n")
    r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-c", code, cfg.path], capture_output=True, text=True,
                       timeout=60, env={**os.environ,
                                        "PYTHONPATH": str(Path(__file__).parents[3])})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[] 1", r.stdout
