"""Credential rotation under load: wrk keeps POSTing /vx11/route with credential A while
B is added, the clients move to B, and A is revoked. No request that presents a valid
credential gets anything but 2xx, no connection is refused, and A is refused within 5 s
of its revocation (a probe keeps presenting it)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.integration.conftest import run_gateway
from tests.support import poll_for
from vx11d import credentials

LUA = Path(__file__).resolve().parents[2] / "bench" / "rotation.lua"  # shared with the bench


def route(url: str, token: str) -> int:
    req = urllib.request.Request(url + "/vx11/route", data=b'{"query": "2+2"}',
                                 method="POST", headers={"X-VX11-Token": token,
                                                         "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_rotation_under_wrk_load_fails_no_valid_request_and_refuses_a_within_5s(tmp_path):
    assert shutil.which("wrk"), "wrk is in the Makefile's APT_PACKAGES: make apt"
    with run_gateway(tmp_path) as (url, _secret, log, _proc):
        creds, token = str(tmp_path / "credentials.d"), str(tmp_path / "token")
        a = credentials.add(creds, "client-a", frozenset({"chat"}), token)
        assert poll_for(lambda: route(url, a) == 200, timeout=10, what="A accepted")
        current = tmp_path / "current"
        current.write_text(f"A {a}\n")
        wrk = subprocess.Popen(["wrk", "-t2", "-c2", "-d10s", "-s", str(LUA), url],
                               env={"VX11_TOKEN_FILE": str(current), "PATH": "/usr/bin"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(2)  # load with A alone
            b = credentials.add(creds, "client-b", frozenset({"chat"}), token)
            tmp = tmp_path / "current.tmp"
            tmp.write_text(f"B {b}\n")
            tmp.replace(current)  # the clients move to B (each request re-reads it)
            time.sleep(1.5)  # every client has moved
            credentials.revoke(creds, "client-a", token)
            revoked = time.monotonic()
            poll_for(lambda: route(url, a) == 401, timeout=5, interval=0.05,
                     what="A refused within 5 s of its revocation")
            refused_after = time.monotonic() - revoked
            out, _ = wrk.communicate(timeout=60)
        finally:
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait()
    line = next((x for x in out.splitlines() if x.startswith("ROTATION ")), None)
    assert line, out
    result = json.loads(line.removeprefix("ROTATION "))
    assert result["answers"] > 100, out
    assert result["bad"] == {} and result["socket_errors"] == 0, out
    assert refused_after < 5
    text = log.read_text()
    assert "credential client-b is valid from now on" in text
    assert "credential client-a is refused from now on" in text
    assert a not in text and b not in text
