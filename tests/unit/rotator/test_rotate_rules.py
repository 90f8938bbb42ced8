"""The rotator's alert rules load and their promtool tests pass."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[3] / "packaging" / "prometheus"


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed")
@pytest.mark.parametrize("argv", [["check", "rules", "vx11-rotate.rules.yml"],
                                  ["test", "rules", "vx11-rotate.rules.test.yml"]])
def test_promtool(argv):
    r = subprocess.run(["promtool", *argv], cwd=RULES, capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
