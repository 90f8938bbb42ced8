"""lintian on the built package: no error, no warning; every override gives its reason."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.host, pytest.mark.timeout(1800)]
OVERRIDES = Path(__file__).resolve().parents[2] / "packaging" / "deb" / "lintian-overrides"


def test_lintian_has_no_errors_or_warnings(debs):
    r = subprocess.run(["lintian", "--fail-on", "error,warning", "--no-tag-display-limit",
                        str(debs["current"])], capture_output=True, text=True, timeout=900)
    tags = [ln for ln in r.stdout.splitlines() if ln[:2] in ("E:", "W:")]
    assert r.returncode == 0 and not tags, "\n".join(tags) or r.stderr[-2000:]


def test_every_lintian_override_says_why():
    lines = OVERRIDES.read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("vx11d:"):
            above = lines[:i]
            while above and above[-1].startswith("vx11d:"):
                above.pop()  # overrides grouped under one reason
            assert above and above[-1].startswith("# ") and len(above[-1]) > 20, line
