"""No secret reaches journald: what really arrives (``journalctl -o export``) is read back."""

from __future__ import annotations

import secrets

import pytest

from tests.support import poll_for

from .conftest import REPO

pytestmark = pytest.mark.system

PROBE = str(REPO / "tests" / "system" / "redact_probe.py")


def test_api_token_and_remote_key_never_reach_journald_even_in_a_traceback(sandbox):
    sb = sandbox
    key = "sk-" + secrets.token_hex(16)
    unit = f"vx11-redact-probe-{secrets.token_hex(4)}"
    keyfile = sb.etc_vx11 / "remote.key"
    keyfile.write_text(key + "\n")
    keyfile.chmod(0o600)
    dump = sb.etc_vx11 / f"{unit}.export"
    try:
        r = sb.exec(["systemd-run", "--wait", "--collect", f"--unit={unit}", "--quiet",
                     "/opt/vx11d/bin/python", PROBE, "/etc/vx11/token",
                     "/etc/vx11/remote.key"], timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr

        def exported() -> bytes:
            sb.exec(["sh", "-c", f"journalctl --no-pager -o export -u {unit} "
                     f"> /etc/vx11/{unit}.export"], timeout=30)
            data = dump.read_bytes()
            return data if b"probe done" in data else b""

        data = poll_for(exported, timeout=15, what="the probe's journal entries")
        token = sb.token().encode()
        assert token not in data and key.encode() not in data
        # the traceback did reach the journal, with the secrets replaced
        assert b"RuntimeError: a bug with token [redacted] and key [redacted]" in data
        assert b"VX11_DETAIL=[redacted]" in data
        assert b"UPSTREAM_AUTHORIZATION=Bearer [redacted]" in data
        assert b"VX11_KEY=[redacted]" in data
        assert b"Stack (most recent call last)" in data
    finally:
        keyfile.unlink(missing_ok=True)
        dump.unlink(missing_ok=True)
