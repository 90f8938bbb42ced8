"""Every shipped Prometheus rule file passes `promtool check rules` and has passing unit tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "packaging" / "prometheus"
RULE_FILES = sorted(RULES.glob("*.rules.yml"))


def test_promtool_is_installed():
    assert shutil.which("promtool"), "promtool missing: apt-get install prometheus"
    assert RULE_FILES, "no rule files shipped"


@pytest.mark.parametrize("rules", RULE_FILES, ids=lambda p: p.name)
def test_rules_check_and_tests_pass(rules):
    check = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = rules.with_name(rules.name.replace(".rules.yml", ".rules.test.yml"))
    assert tests.exists(), f"{rules.name} has no promtool test file"
    r = subprocess.run(["promtool", "test", "rules", tests.name], cwd=RULES,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
