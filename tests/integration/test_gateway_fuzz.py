"""Schema fuzzing: schemathesis drives a live gateway process from docs/openapi.json.

A real ``vx11d gateway`` (its own process, TCP port, DB file, 0600 token file, a
credential of each scope, TLS with a certificate from a throwaway CA) gets a
fixed-seed, bounded run of generated requests for every documented operation over
TLS, once per scope, with that scope's credential: no server
error (a 5xx other than the documented 502/503/504 upstream answers) and every
response conforms to the document (status code, content type, body schema; a 403
where the operation's x-vx11-scope is not the credential's). The gateway's log must
not hold an unhandled error either.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import run_gateway
from tests.tls_support import Pki
from vx11d import credentials

REPO = Path(__file__).resolve().parents[2]
SEED = 20261201
MAX_EXAMPLES = 40  # per operation and phase; about a minute on 2 loaded cores


@pytest.fixture
def tls_gateway(tmp_path):
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("gw")
    with run_gateway(tmp_path / "gw", f"  tls_cert_file: {cert}\n  tls_key_file: {key}\n",
                     ca=pki.ca) as (url, secret, log, _proc):
        yield url, secret, log, pki.ca


@pytest.mark.parametrize("scope", credentials.SCOPES)
def test_fuzzing_the_openapi_document_finds_no_server_error_and_no_nonconformance(
        tls_gateway, tmp_path, scope):
    url, secret, log, ca = tls_gateway
    assert url.startswith("https://")
    token = secret[scope]
    st = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) \
        or shutil.which("schemathesis")
    assert st, "schemathesis is in the test extra: make deps"
    r = subprocess.run(
        [st, "--config-file", str(REPO / "tests" / "integration" / "fuzz.toml"), "run",
         str(REPO / "docs" / "openapi.json"), "--url", url, "--tls-verify", ca,
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
