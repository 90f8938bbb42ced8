"""lintian of each release on its package: no error, no warning; every override gives
its reason. Each release's own lintian runs in that release's build root
(``build.sh --lintian``): Debian 13's lintian knows tags Debian 12's does not."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .packages import build_current

pytestmark = [pytest.mark.host, pytest.mark.timeout(1800)]
REPO = Path(__file__).resolve().parents[2]
OVERRIDES = REPO / "packaging" / "deb" / "lintian-overrides"


@pytest.mark.parametrize(("release", "hermes"), [("bookworm", False), ("trixie", True)])
def test_lintian_of_the_release_has_no_errors_or_warnings(release, hermes):
    deb = build_current(release, hermes=hermes)
    r = subprocess.run([str(REPO / "packaging" / "deb" / "build.sh"), "--lintian", str(deb),
                        "--release", release], capture_output=True, text=True, timeout=1200)
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
