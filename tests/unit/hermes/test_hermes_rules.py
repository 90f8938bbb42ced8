"""The shipped Hermes/route alert rules are valid and behave as their tests say."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[3] / "packaging" / "prometheus"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_check_and_test_rules():
    r = subprocess.run(["promtool", "check", "rules", "vx11-hermes.rules.yml"], cwd=RULES,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["promtool", "test", "rules", "vx11-hermes.rules.test.yml"],
                       cwd=RULES, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
