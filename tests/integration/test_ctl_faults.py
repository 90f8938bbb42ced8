"""vx11ctl under real host faults: one clear line and a non-zero exit, never a traceback.

Each fault is real: a tmpfs state dir of its own (``unshare -m``) remounted read-only or
filled up, the DB files deleted, another process holding the write lock.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = str(Path(__file__).with_name("ctl_fault_runner.py"))
WRITES = ("hijas spawn", "hijas stop", "activate hermes")
# what the one line must say, by fault (any of these words)
SAYS = {"read_only": ("read-only",), "disk_full": ("no space", "full"),
        "db_missing": ("missing", "no database", "deleted"), "locked": ("locked", "busy")}


def run_under(fault: str, tmp_path: Path) -> list[dict]:
    state = tmp_path / "state"
    state.mkdir()
    script = (f"mount -t tmpfs -o size=2m tmpfs {state} && "
              f"exec {sys.executable} {RUNNER} {state} {fault}")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=300, check=False,
                       cwd=str(Path(__file__).resolve().parents[2]))
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("fault", ["read_only", "disk_full", "db_missing", "locked"])
def test_ctl_printed_tracebacks_on_host_faults_now_one_clear_line(fault, tmp_path):
    """Regression (issue 10 finding 1): `vx11ctl hijas spawn` and even `hijas list`
    printed Python tracebacks on a read-only state dir."""
    failed_writes = 0
    for res in run_under(fault, tmp_path):
        out, err = res["stdout"], res["stderr"]
        assert "Traceback" not in err + out, res
        if res["rc"] == 0:
            # a read that could still be served (full disk, lock held: WAL readers)
            assert res["cmd"] not in WRITES, res
            continue
        # the one line: the error on stderr, or a check's own verdict on stdout
        line = err.strip() or out.strip()
        assert len(line.splitlines()) == 1, res
        assert any(w in line.lower() for w in SAYS[fault]), res
        if err:
            assert line.startswith("vx11ctl: "), res
        failed_writes += res["cmd"] in WRITES
    assert failed_writes == len(WRITES)
