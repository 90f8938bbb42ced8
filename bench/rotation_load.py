"""Credential rotation under wrk load: what bench/gateway_load.py and
tests/integration/test_gateway_rotation.py share. ``rotation.lua`` (beside this file)
drives the clients: each request presents the secret named in the ``current`` file,
which is re-read per request, and the run ends with one ``ROTATION {json}`` line."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

LUA = Path(__file__).with_name("rotation.lua")


def route_status(url: str, secret: str) -> int:
    """The status of one POST /vx11/route presenting ``secret``."""
    req = urllib.request.Request(f"{url}/vx11/route", data=b'{"query": "2+2"}',
                                 method="POST", headers={"X-VX11-Token": secret,
                                                         "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code


def present(current: Path, label: str, secret: str) -> None:
    """Make every client present ``secret`` from its next request (atomic replace)."""
    tmp = current.with_name(current.name + ".tmp")
    tmp.write_text(f"{label} {secret}\n")
    os.replace(tmp, current)


def start_wrk(url: str, current: Path, seconds: int) -> subprocess.Popen[str]:
    """wrk, 2 threads and 2 connections for ``seconds``, presenting ``current``'s secret."""
    return subprocess.Popen(["wrk", "-t2", "-c2", f"-d{seconds}s", "-s", str(LUA), url],
                            env={"VX11_TOKEN_FILE": str(current), "PATH": "/usr/bin"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def result(out: str) -> dict[str, Any] | None:
    """The ``ROTATION`` line's figures from wrk's output (answers, bad, socket_errors)."""
    line = next((x for x in out.splitlines() if x.startswith("ROTATION ")), None)
    return None if line is None else json.loads(line.removeprefix("ROTATION "))
