"""vx11-reaper.service under a real systemd: STATUS, metrics, hardening, a real hija unit."""

from __future__ import annotations

import json
import re
import secrets
import textwrap

import pytest

from tests.support import poll_for

from .conftest import REPO, journal, show, sysctl

pytestmark = pytest.mark.system

UNIT = "vx11-reaper.service"
CONFIG = textwrap.dedent("""\
    log_level: info
    reaper:
      interval: 1
      hija_grace: 1
      rules:
        - {name: leaky, comm: "^leaky$", zombie_parent: true, min_zombies: 2}
""")
LEAKY = ("import os, time\n"
         "open('/proc/self/comm', 'w').write('leaky')\n"
         "for _ in range(2):\n"
         "    os.fork() or os._exit(0)\n"
         "time.sleep(600)\n")


@pytest.fixture
def reaper(sandbox):
    """The reaper running with CONFIG; the sandbox's config and units restored afterwards."""
    original = (sandbox.etc_vx11 / "vx11.yml").read_text()
    transient: list[str] = []
    sandbox.write_config(CONFIG)
    sysctl(sandbox, "restart", UNIT)
    try:
        yield transient
    finally:
        for unit in transient:
            sysctl(sandbox, "stop", unit, check=False)
            sysctl(sandbox, "reset-failed", unit, check=False)
        sandbox.write_config(original)
        sysctl(sandbox, "stop", UNIT, check=False)
        sysctl(sandbox, "reset-failed", UNIT, check=False)


def run_unit(sb, transient: list[str], unit: str, *argv: str, slice_: str = "") -> str:
    args = ["systemd-run", "--unit", unit, "--property=CollectMode=inactive-or-failed"]
    if slice_:
        args += ["--slice", slice_]
    r = sb.exec([*args, *argv], timeout=30)
    assert r.returncode == 0, r.stderr
    transient.append(f"{unit}.service")
    return f"{unit}.service"


def test_status_names_the_leaking_parent(sandbox, reaper):
    unit = run_unit(sandbox, reaper, "vx11t-leaky", "/usr/bin/python3", "-c", LEAKY)
    pid = poll_for(lambda: show(sandbox, unit, "MainPID")["MainPID"] != "0"
                   and show(sandbox, unit, "MainPID")["MainPID"], 10, what="leaky MainPID")
    want = f"2 zombies under pid {pid} (leaky), 0 actions"
    poll_for(lambda: show(sandbox, UNIT, "StatusText")["StatusText"] == want, 15,
             what=f"StatusText {want!r}")
    assert show(sandbox, UNIT, "ActiveState")["ActiveState"] == "active"
    seen = poll_for(lambda: journal(sandbox, "VX11_EVENT=zombies_observed"), 10,
                    what="a zombies_observed journal entry")
    e = seen[-1]
    assert (e["VX11_PID"], e["VX11_COMM"], e["VX11_RULE"], e["VX11_OUTCOME"]) == (
        pid, "leaky", "leaky", "observed")
    assert show(sandbox, unit, "ActiveState")["ActiveState"] == "active"  # observe only


def test_metrics_pass_promtool(sandbox, reaper):
    poll_for(lambda: sandbox.exec(["curl", "-sf", "http://127.0.0.1:9713/metrics"],
                                  timeout=10).returncode == 0, 15, what="/metrics")
    r = sandbox.exec(["sh", "-c", "curl -sf http://127.0.0.1:9713/metrics | "
                      "/usr/bin/promtool check metrics"], timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    text = sandbox.exec(["curl", "-sf", "http://127.0.0.1:9713/metrics"], timeout=10).stdout
    for name in ("vx11_reaper_processes_scanned", "vx11_reaper_zombies{rule=\"leaky\"}",
                 "vx11_reaper_scan_duration_seconds_bucket", "vx11_reaper_signals_total",
                 "vx11_reaper_last_scan_timestamp_seconds", "vx11_build_info"):
        assert name in text, name
    assert "pid=" not in text


def test_unit_has_only_cap_kill_and_exposure_at_most_2(sandbox):
    props = show(sandbox, UNIT, "CapabilityBoundingSet", "AmbientCapabilities", "User",
                 "ProtectProc", "PrivateUsers", "ProcSubset", "NoNewPrivileges")
    assert props["CapabilityBoundingSet"] == "cap_kill"
    assert props["AmbientCapabilities"] == "cap_kill"
    assert props["ProtectProc"] == "default" and props["ProcSubset"] == "all"
    assert props["PrivateUsers"] == "no" and props["NoNewPrivileges"] == "yes"
    r = sandbox.exec(["systemd-analyze", "security", "--no-pager", UNIT], timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout[-500:] + r.stderr
    assert float(m.group(1)) <= 2.0, r.stdout


def _hija_row(sandbox, hid: str, status: str) -> None:
    code = (
        "import sys, time\n"
        "from vx11d.config import load\n"
        "from vx11d.db import Database\n"
        "db = Database.from_config(load(), migrate=True)\n"
        "hid, status = sys.argv[1], sys.argv[2]\n"
        "db.write(lambda c: c.execute(\"INSERT INTO spawner_hijas (id, template, ttl_s, unit, "
        "status, created_at) VALUES (?, 'demo', 60, ?, ?, ?)\", "
        "(hid, f'vx11-hija-{hid}.service', status, time.time())))\n")
    r = sandbox.exec(["setpriv", "--reuid=vx11", "--regid=vx11", "--init-groups",
                      "/opt/vx11d/bin/python", "-c", code,
                      hid, status], timeout=30, env={"PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr


def test_a_hija_whose_row_ended_is_terminated_under_systemd(sandbox, reaper):
    ended, live = f"rt{secrets.token_hex(4)}", f"rt{secrets.token_hex(4)}"
    _hija_row(sandbox, ended, "expired")
    _hija_row(sandbox, live, "running")
    u_ended = run_unit(sandbox, reaper, f"vx11-hija-{ended}", "/bin/sleep", "600",
                       slice_="vx11-hijas.slice")
    u_live = run_unit(sandbox, reaper, f"vx11-hija-{live}", "/bin/sleep", "600",
                      slice_="vx11-hijas.slice")
    assert show(sandbox, u_ended, "ControlGroup")["ControlGroup"] == (
        f"/vx11.slice/vx11-hijas.slice/{u_ended}")
    poll_for(lambda: show(sandbox, u_ended, "ActiveState")["ActiveState"] != "active", 20,
             what="the ended hija's unit to stop")
    entries = poll_for(lambda: [e for e in journal(sandbox, "VX11_EVENT=hija_terminated")
                                if e.get("VX11_HIJA_ID") == ended], 10,
                       what="hija_terminated journal entry")
    assert entries[0]["VX11_SIGNAL"] == "SIGTERM"
    assert entries[0]["VX11_OUTCOME"] == "sigterm_sent"
    assert show(sandbox, u_live, "ActiveState")["ActiveState"] == "active"
    r = sandbox.exec(["/opt/vx11d/bin/vx11ctl", "reaper", "scan", "--json"], timeout=60,
                     env={"PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["processes"] > 3 and not data["hija_records_unavailable"]
    assert not [f for f in data["findings"] if f["hija_id"] == live]
