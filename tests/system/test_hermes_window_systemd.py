"""Activation windows start and stop vx11-hermes (madre's job, issue 6 contract).

The whole contract under real systemd: a live ``hermes`` activation row → madre
starts vx11-hermes.service; the window expires → madre stops it.
"""

from __future__ import annotations

import time

import pytest

from tests.support import poll_for

from .conftest import show, sysctl

pytestmark = pytest.mark.system

MODEL = "/var/lib/vx11/models/random-weights-tiny.gguf"  # present, never loaded here
WINDOW = 12.0


def _py(sb, code: str):
    r = sb.exec(["/opt/vx11d/bin/python", "-c", code], timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_window_starts_hermes_and_expiry_stops_it(sandbox):
    r = sandbox.exec(["sh", "-c", f"/opt/vx11d/bin/python -m vx11d.hermes.testmodel {MODEL}"
                      f" && chgrp vx11 {MODEL} && chmod 0640 {MODEL}"], timeout=60)
    assert r.returncode == 0, r.stderr
    try:
        sysctl(sandbox, "start", "vx11-madre.service")
        _py(sandbox, "import time\nfrom vx11d import config\nfrom vx11d.db import Database\n"
            "db = Database.from_config(config.load(), migrate=True)\nnow = time.time()\n"
            "db.write(lambda c: c.execute(\"INSERT INTO activations (component, created_at,"
            f" expires_at, requested_by) VALUES ('hermes', ?, ?, 'test')\", (now, now + "
            f"{WINDOW})))\n"
            # as `vx11ctl activate` and POST /vx11/policy do: madre acts on the wake
            "from vx11d import hijas\n"
            "assert hijas.wake_madre(config.load().gateway.madre_wake_socket)\n")
        t0 = time.monotonic()
        poll_for(lambda: show(sandbox, "vx11-hermes.service", "ActiveState")["ActiveState"]
                 == "active", 30, what="madre starts vx11-hermes inside the window")
        poll_for(lambda: show(sandbox, "vx11-hermes.service", "ActiveState")["ActiveState"]
                 in ("inactive", "failed"), WINDOW + 60, what="madre stops it at expiry")
        assert time.monotonic() - t0 >= WINDOW - 2
    finally:
        _py(sandbox, "import time\nfrom vx11d import config\nfrom vx11d.db import Database\n"
            "db = Database.from_config(config.load())\ndb.write(lambda c: c.execute("
            "\"UPDATE activations SET ended_at = ?, ended_reason = 'test' WHERE ended_at IS "
            "NULL\", (time.time(),)))\n")
        for unit in ("vx11-madre.service", "vx11-hermes.service"):
            sysctl(sandbox, "stop", unit, check=False)
            sysctl(sandbox, "reset-failed", unit, check=False)
        sandbox.exec(["rm", "-f", MODEL], timeout=30)
