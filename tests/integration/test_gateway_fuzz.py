"""Schema fuzzing: schemathesis drives a live gateway process from docs/openapi.json.

A real ``vx11d gateway`` (its own process, TCP port, DB file and 0600 token file) gets
a fixed-seed, bounded run of generated requests for every documented operation, with
the token: no server error (a 5xx other than the documented 502/503/504 upstream
answers) and every response conforms to the document (status code, content type,
body schema). The gateway's log must not hold an unhandled error either.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support import poll_for, stop

REPO = Path(__file__).resolve().parents[2]
SEED = 20261201
MAX_EXAMPLES = 40  # per operation and phase; about a minute on 2 loaded cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_gateway(tmp_path):
    token = secrets.token_urlsafe(24)
    tok = tmp_path / "token"
    fd = os.open(tok, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    port = free_port()
    cfg = tmp_path / "vx11.yml"
    cfg.write_text(f"""
db: {{path: {tmp_path}/vx11.db}}
gateway:
  listen_address: 127.0.0.1
  listen_port: {port}
  metrics_port: {free_port()}
  token_file: {tok}
  madre_wake_socket: {tmp_path}/madre.sock
  spawn_wait: 0.1s
  auth_fail_limit: 100000
madre:
  templates:
    sleeper: {{command: [/usr/bin/sleep, infinity], max_ttl: 60s}}
""")
    log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen([sys.executable, "-m", "vx11d", "gateway"], cwd=REPO,
                            env={**os.environ, "VX11_CONFIG": str(cfg)}, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as r:
                return r.status == 200
        except OSError:
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
            return False

    try:
        poll_for(up, timeout=30, what="the gateway to answer /health")
        yield url, token, tmp_path / "gateway.log"
    finally:
        stop(proc)
        log.close()


def test_fuzzing_the_openapi_document_finds_no_server_error_and_no_nonconformance(
        live_gateway, tmp_path):
    url, token, log = live_gateway
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) \
        or shutil.which("schemathesis")
    assert st, "schemathesis is in the test extra: make deps"
    r = subprocess.run(
        [st, "--config-file", str(REPO / "tests" / "integration" / "fuzz.toml"), "run",
         str(REPO / "docs" / "openapi.json"), "--url", url,
         # every credential presented must be valid: schemathesis fills both schemes
         "-H", f"X-VX11-Token: {token}", "-H", f"Authorization: Bearer {token}",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
         "response_schema_conformance", "--phases", "examples,coverage,fuzzing",
         "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1",
         "--no-shrink", "--request-timeout", "30",
         "--report", "junit", "--report-dir", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=280, cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert " passed" in out and "Seed: " + str(SEED) in out, out[-2000:]
    gw = log.read_text(errors="replace")
    assert "unhandled error" not in gw and "Traceback" not in gw, gw[-3000:]
