"""Credential rotation under load: wrk keeps POSTing /vx11/route with credential A while
B is added, the clients move to B, and A is revoked. No request that presents a valid
credential gets anything but 2xx, no connection is refused, and A is refused within 5 s
of its revocation (a probe keeps presenting it)."""

from __future__ import annotations

import shutil
import time

from bench.rotation_load import present, result, route_status, start_wrk
from tests.integration.conftest import run_gateway
from tests.support import poll_for
from vx11d import credentials


def test_rotation_under_wrk_load_fails_no_valid_request_and_refuses_a_within_5s(tmp_path):
    assert shutil.which("wrk"), "wrk is in the Makefile's APT_PACKAGES: make apt"
    with run_gateway(tmp_path) as (url, _secret, log, _proc):
        creds, token = str(tmp_path / "credentials.d"), str(tmp_path / "token")
        a = credentials.add(creds, "client-a", frozenset({"chat"}), token)
        assert poll_for(lambda: route_status(url, a) == 200, timeout=10, what="A accepted")
        current = tmp_path / "current"
        present(current, "A", a)
        wrk = start_wrk(url, current, 10)
        try:
            time.sleep(2)  # load with A alone
            b = credentials.add(creds, "client-b", frozenset({"chat"}), token)
            present(current, "B", b)  # the clients move to B (each request re-reads it)
            time.sleep(1.5)  # every client has moved
            credentials.revoke(creds, "client-a", token)
            revoked = time.monotonic()
            poll_for(lambda: route_status(url, a) == 401, timeout=5, interval=0.05,
                     what="A refused within 5 s of its revocation")
            refused_after = time.monotonic() - revoked
            out, _ = wrk.communicate(timeout=60)
        finally:
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait()
    got = result(out)
    assert got, out
    assert got["answers"] > 100, out
    assert got["bad"] == {} and got["socket_errors"] == 0, out
    assert refused_after < 5
    text = log.read_text()
    assert "credential client-b is valid from now on" in text
    assert "credential client-a is refused from now on" in text
    assert a not in text and b not in text
