"""System-tier helpers: install a unit file into the session's sandbox, read systemd state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def show(sb, unit: str, *props: str) -> dict[str, str]:
    r = sb.exec(["systemctl", "show", "-p", ",".join(props), unit], timeout=30)
    assert r.returncode == 0, r.stderr
    return dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)


def journal(sb, *matches: str) -> list[dict]:
    r = sb.exec(["journalctl", "--no-pager", "-o", "json", *matches], timeout=30)
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def sysctl(sb, *args: str, check: bool = True):
    r = sb.exec(["systemctl", *args], timeout=60)
    if check:
        assert r.returncode == 0, f"systemctl {' '.join(args)}: {r.stderr}"
    return r


@pytest.fixture
def test_unit(sandbox):
    """Install unit files from tests/system/units into the sandbox; removed afterwards."""
    installed: list[str] = []

    def install(name: str, **subst: str) -> str:
        text = (REPO / "tests" / "system" / "units" / name).read_text()
        text = text.replace("@REPO@", str(sandbox.repo))
        for k, v in subst.items():
            text = text.replace(f"@{k}@", v)
        (sandbox.state / "etc-systemd-system" / name).write_text(text)
        installed.append(name)
        sysctl(sandbox, "daemon-reload")
        return name

    yield install
    for name in installed:
        sysctl(sandbox, "stop", name, check=False)
        sysctl(sandbox, "reset-failed", name, check=False)
        (sandbox.state / "etc-systemd-system" / name).unlink(missing_ok=True)
    sysctl(sandbox, "daemon-reload", check=False)
