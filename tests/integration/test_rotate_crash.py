"""kill -9 at every phase of a real ``vx11d rotate`` process, then a re-run converges.

At the moment of the kill every due audit dir must exist as its intact source or as a
sound archive holding all of it (or both); the re-run must finish the job: every due
dir archived with all its files, sources gone, no temp file left, the DB sound.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.rotate_support import archive_members, audit_tree, file_hash, make_cfg, write_tree
from vx11d import db
from vx11d.rotator.run import FAULT_ENV, FAULT_POINTS

VX11D = os.path.join(os.path.dirname(sys.executable), "vx11d")


def stamp(days_ago: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() - days_ago * 86400))


def run_rotate(cfg_path: str, fault: str | None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VX11_CONFIG": cfg_path}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    proc = subprocess.Popen([VX11D, "rotate", "--aggressive"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def check_nothing_lost(root: Path, due: dict[str, dict[str, bytes]]) -> None:
    """Each due dir is its intact source, or a sound archive with all of it, or both."""
    for name, files in due.items():
        arch = root / "archive" / f"{name}.tar.gz"
        want = {f"{name}/{rel}": ("f", file_hash(data)) for rel, data in files.items()}
        if arch.exists():
            members = archive_members(arch)  # raises if unsound
            got = {k: v for k, v in members.items() if k in want}
            assert got == want, f"{arch}: archive misses files"
        else:
            for rel, data in files.items():
                assert (root / name / rel).read_bytes() == data, f"{name}/{rel} lost"


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("point", FAULT_POINTS)
def test_kill_9_at_each_phase_then_rerun_converges(tmp_path, point, workers):
    root = tmp_path / "audits"
    due = {stamp(d): audit_tree(root, stamp(d), n_files=8) for d in (30, 20, 10)}
    for name in due:
        write_tree(root / name, {"logs/SCORECARD.json": b"{}"})
    active = stamp(1)
    audit_tree(root, active)
    old_archive = f"{stamp(200)}.tar.gz"
    write_tree(root / "archive", {old_archive: b"ancient", ".vx11-rotate-tmp.x.tar.gz": b""})
    cfg = make_cfg(tmp_path, [{"path": str(root)}], workers=workers)

    r = run_rotate(cfg.path, point)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    check_nothing_lost(root, due)

    r = run_rotate(cfg.path, None)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    check_nothing_lost(root, due)
    for name in due:
        assert (root / "archive" / f"{name}.tar.gz").exists()
        assert sorted(p.name for p in (root / name).rglob("*") if p.is_file()) \
            == ["SCORECARD.json"], "source not removed or the excluded file lost"
    assert (root / active / "f0.txt").exists()
    assert not [n for n in os.listdir(root / "archive") if n.startswith(".")]
    assert not (root / "archive" / old_archive).exists()
    d = db.Database(cfg.db.path)
    assert db.check(d) == []
    assert d.query("SELECT count(*) FROM rotations WHERE errors = 0")[0][0] >= 1
