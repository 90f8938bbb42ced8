"""The shipped alert rules load and behave as their promtool tests say."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DIR = Path(__file__).resolve().parents[3] / "packaging" / "prometheus"

pytestmark = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing")


def test_reaper_rules_pass_promtool_check():
    r = subprocess.run(["promtool", "check", "rules", "vx11-reaper.rules.yml"], cwd=DIR,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_reaper_rules_pass_promtool_test():
    r = subprocess.run(["promtool", "test", "rules", "vx11-reaper.rules.test.yml"], cwd=DIR,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
