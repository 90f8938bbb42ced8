"""Shared integration fixtures: a live gateway process with a credential of each scope."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support import poll_for, stop
from vx11d import credentials

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_gateway(tmp_path: Path, extra: str = "", *, listen: str = "127.0.0.1",
                ca: str | None = None):
    """A ``vx11d gateway`` process with a credential of each scope (``fuzz-<scope>``).

    Yields (url, {scope: secret}, log path, process). ``extra`` is YAML appended under
    ``gateway:``; with ``ca`` the URL is https and the readiness probe trusts that CA.
    """
    token = secrets.token_urlsafe(24)
    creds = tmp_path / "credentials.d"
    tmp_path.mkdir(parents=True, exist_ok=True)
    creds.mkdir(mode=0o750, exist_ok=True)
    secret = {scope: credentials.add(str(creds), f"fuzz-{scope}", frozenset({scope}),
                                     str(tmp_path / "token"))
              for scope in credentials.SCOPES}
    tok = tmp_path / "token"
    fd = os.open(tok, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    port = free_port()
    cfg = tmp_path / "vx11.yml"
    cfg.write_text(f"""
db: {{path: {tmp_path}/vx11.db}}
gateway:
  listen_address: {listen}
  listen_port: {port}
  metrics_port: {free_port()}
  token_file: {tok}
  credentials_dir: {creds}
  madre_wake_socket: {tmp_path}/madre.sock
  spawn_wait: 0.1s
  auth_fail_limit: 100000
{extra}
madre:
  templates:
    sleeper: {{command: [/usr/bin/sleep, infinity], max_ttl: 60s}}
""")
    log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen([sys.executable, "-m", "vx11d", "gateway"], cwd=REPO,
                            env={**os.environ, "VX11_CONFIG": str(cfg)}, stdout=log,
                            stderr=subprocess.STDOUT)
    host = "localhost" if ca else "127.0.0.1"
    url = f"{'https' if ca else 'http'}://{host}:{port}"
    ctx = ssl.create_default_context(cafile=ca) if ca else None

    def up() -> bool:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5, context=ctx) as r:
                return r.status == 200
        except OSError:
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            return False

    try:
        poll_for(up, timeout=30, what="the gateway to answer /health")
        yield url, secret, tmp_path / "gateway.log", proc
    finally:
        stop(proc)
        log.close()


@pytest.fixture
def live_gateway(tmp_path):
    """A gateway process; yields (url, {scope: secret}, log path)."""
    with run_gateway(tmp_path) as (url, secret, log, _proc):
        yield url, secret, log
