"""``vx11ctl rotate``: the local path, and no import of the rotator's internals."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.rotate_support import OLD, audit_tree, make_cfg

VX11CTL = os.path.join(os.path.dirname(sys.executable), "vx11ctl")


def test_vx11ctl_rotate_local_runs_vx11d_rotate(tmp_path):
    root = tmp_path / "audits"
    audit_tree(root, OLD)
    cfg = make_cfg(tmp_path, [{"path": str(root)}])
    r = subprocess.run([VX11CTL, "--config", cfg.path, "rotate", "--dry-run", "--json"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["dry_run"] and rep["phases"]["scan"]["due"] == 1
    assert (root / OLD).exists()
    r = subprocess.run([VX11CTL, "--config", cfg.path, "rotate", "--local"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert "1 archived" in r.stdout and not (root / OLD).exists()


def test_vx11ctl_does_not_import_the_rotator():
    code = ("import sys, vx11d.ctl.main as m; m.build_parser(); "
            "print([k for k in sys.modules if k.startswith('vx11d.rotator')])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True)
    assert r.stdout.strip() == "[]"
