"""System-tier helpers: install a unit file into the session's sandbox, read systemd state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import poll_for

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


STATE_DAEMONS = ("vx11-madre.service", "vx11-reaper.service", "vx11-gateway.socket")
_STATE = "/var/lib/vx11"
_HEALTH = ("import urllib.request, urllib.error\ntry:\n    urllib.request.urlopen("
           "'http://127.0.0.1:8000/health', timeout=10)\nexcept urllib.error.URLError:\n"
           "    raise SystemExit(1)")


def _sh(sb, script: str, check: bool = True):
    r = sb.exec(["sh", "-c", script], timeout=60)
    if check:
        assert r.returncode == 0, f"{script}: {r.stderr}"
    return r


@pytest.fixture
def state_set(sandbox):
    """madre, the reaper and the socket-activated gateway on a fresh 64 MiB tmpfs state
    dir of their own (so a test can fill it, remount it, replace the DB in it); all
    stopped and the state dir restored afterwards."""
    sb = sandbox
    sb.write_config((REPO / "packaging" / "sandbox" / "vx11.yml").read_text())
    sysctl(sb, "stop", "vx11-gateway.service", *STATE_DAEMONS, check=False)
    sysctl(sb, "reset-failed", check=False)
    _sh(sb, f"while mountpoint -q {_STATE}; do umount -l {_STATE}; done; "
            f"mount -t tmpfs -o size=64m,mode=2770,gid=vx11 vx11-state {_STATE} && "
            f"systemd-tmpfiles --create {REPO}/packaging/tmpfiles.d/vx11.conf")
    sysctl(sb, "daemon-reload")
    sysctl(sb, "start", *STATE_DAEMONS)
    poll_for(lambda: sb.exec(["/opt/vx11d/bin/python", "-c", _HEALTH],
                             timeout=30).returncode == 0, timeout=30, what="gateway health")
    try:
        yield sb
    finally:
        sysctl(sb, "stop", "vx11-gateway.service", *STATE_DAEMONS, check=False)
        sysctl(sb, "stop", "vx11-hija-*", check=False)
        sysctl(sb, "reset-failed", check=False)
        _sh(sb, f"rm -f /root/*.db; mount -o remount,rw {_STATE}; "
                f"while mountpoint -q {_STATE}; do umount -l {_STATE}; done; "
                f"systemd-tmpfiles --create {REPO}/packaging/tmpfiles.d/vx11.conf",
            check=False)
