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


def test_every_alert_has_the_one_prefix_and_a_runbook_section():
    """Issue 24: alert names were spelled Vx11… and VX11…; one prefix now, the old names
    listed in docs/alerts.md for existing silences."""
    import re

    names = [m for f in RULE_FILES for m in re.findall(r"^\s*- alert: (\S+)", f.read_text(),
                                                        re.M)]
    assert names and all(n.startswith("VX11") for n in names), names
    doc = (RULES.parents[1] / "docs" / "alerts.md").read_text()
    assert all(f"## {n}\n" in doc for n in names), [n for n in names if f"## {n}\n" not in doc]
    assert "`Vx11GatewayDown` | `VX11GatewayDown`" in doc
