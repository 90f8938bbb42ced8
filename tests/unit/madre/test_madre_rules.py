"""The shipped madre alert rules are valid and behave as their tests say."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[3] / "packaging" / "prometheus"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_check_and_test_madre_rules():
    for argv in (["promtool", "check", "rules", "vx11-madre.rules.yml"],
                 ["promtool", "test", "rules", "vx11-madre.rules.test.yml"]):
        r = subprocess.run(argv, cwd=RULES, capture_output=True, text=True, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
