"""madre + the gateway under real systemd: spawn, expiry, ports, audit, crashes, metrics."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.support import poll_for

from .conftest import REPO, journal, show, sysctl

pytestmark = pytest.mark.system

CLIENT = str(REPO / "tests" / "system" / "madre_client.py")
PY = "/opt/vx11d/bin/python"


def client(sb, *args: str, timeout: float = 60):
    r = sb.exec([PY, CLIENT, *args], timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def api(sb, method, path, body=None, token=True):
    args = ["call", method, path, json.dumps(body) if body is not None else "-"]
    if not token:
        args.append("--no-token")
    return client(sb, *args)


def snapshot(sb):
    return client(sb, "snapshot")


def madre_and_gateway(sandbox):
    """madre and the gateway (socket-activated) restarted on the config in place, up
    until the gateway answers; afterwards both stopped with every hija, failures reset."""
    sysctl(sandbox, "restart", "vx11-madre.service", "vx11-gateway.socket")
    sysctl(sandbox, "stop", "vx11-gateway.service", check=False)
    poll_for(lambda: api(sandbox, "GET", "/health", token=False)["status"] == 200,
             timeout=20, what="gateway health")
    try:
        yield sandbox
    finally:
        sysctl(sandbox, "stop", "vx11-madre.service", "vx11-gateway.service",
               "vx11-gateway.socket", check=False)
        sysctl(sandbox, "stop", "vx11-hija-*", check=False)
        sysctl(sandbox, "reset-failed", check=False)


@pytest.fixture(scope="module")
def vx11(sandbox):
    """madre and the gateway running on the sandbox config; all stopped afterwards."""
    sandbox.write_config((REPO / "packaging" / "sandbox" / "vx11.yml").read_text())
    sysctl(sandbox, "daemon-reload")
    yield from madre_and_gateway(sandbox)


def kill9_madre(sb) -> None:
    pid = show(sb, "vx11-madre.service", "MainPID")["MainPID"]
    assert pid != "0"
    r = sb.exec(["kill", "-9", pid], timeout=10)
    assert r.returncode == 0, r.stderr


def live_consistent(snap) -> bool:
    """No running unit without a live row, no live row without its unit."""
    live_rows = {r["unit"] for r in snap["rows"] if r["status"] in ("starting", "running")}
    requested = [r for r in snap["rows"] if r["status"] == "requested"]
    units = {u for u, active in snap["units"].items() if active in ("active", "activating")}
    return not requested and live_rows == units


def test_spawn_register_expire_release_audit_and_burst(vx11):
    sb = vx11
    r = api(sb, "POST", "/vx11/spawn", {"template": "web", "ttl_s": 3})
    assert r["status"] == 201, r
    h = r["body"]
    assert h["status"] == "running" and h["port"] and h["unit"] == f"vx11-hija-{h['id']}.service"
    assert h["expires_at"] - h["created_at"] == pytest.approx(3, abs=0.5)
    # registered, with the properties systemd really holds
    props = show(sb, h["unit"], "RuntimeMaxUSec", "CollectMode", "KillMode", "Slice",
                 "DynamicUser", "User", "NoNewPrivileges", "TasksMax", "MemoryMax",
                 "Environment", "MainPID")
    assert props["RuntimeMaxUSec"] == "3s" and props["CollectMode"] == "inactive-or-failed"
    assert props["Slice"] == "vx11-hijas.slice" and props["DynamicUser"] == "no"
    assert props["User"] == "vx11-hija"  # the dedicated static user (sysusers.d)
    assert props["KillMode"] == "control-group" and props["NoNewPrivileges"] == "yes"
    assert f"PORT={h['port']}" in props["Environment"] and props["TasksMax"] == "16"
    assert int(props["MainPID"]) == h["main_pid"]
    # expires on time; port released; status expired
    final = poll_for(lambda: (x := api(sb, "GET", f"/vx11/hijas/{h['id']}")["body"])
                     ["status"] not in ("running", "starting") and x, timeout=10,
                     what="the hija to end")
    assert final["status"] == "expired" and final["result"] == "timeout"
    assert abs(final["ended_at"] - final["expires_at"]) < 1.0, final
    assert h["unit"] not in snapshot(sb)["units"]  # collected
    again = api(sb, "POST", "/vx11/spawn", {"template": "web", "ttl_s": 2})["body"]
    assert again["port"] == h["port"]  # the lowest port is free again
    # audit trail: events rows and journal entries
    evs = [e["event"] for e in snapshot(sb)["events"] if e["subject"] == h["id"]]
    assert evs == ["hija_requested", "hija_spawned", "hija_running", "hija_expired"]
    j = journal(sb, "VX11_EVENT=hija_expired", f"VX11_HIJA_ID={h['id']}")
    assert j and j[-1]["VX11_COMPONENT"] == "madre"
    # 5 rapid-fire spawns, all tracked
    res = client(sb, "burst", "5", "sleeper", "2", "5")
    assert [x["status"] for x in res] == [201] * 5, res
    ids = {x["body"]["id"] for x in res}
    assert len(ids) == 5
    poll_for(lambda: all(r["status"] == "expired" for r in snapshot(sb)["rows"]
                         if r["id"] in ids), timeout=10, what="all 5 expired")


def test_bad_requests_get_clear_errors(vx11):
    sb = vx11
    assert api(sb, "POST", "/vx11/spawn", {"template": "sleeper", "ttl_s": "soon"}
               )["status"] == 422
    assert api(sb, "POST", "/vx11/spawn", {"template": "sleeper", "ttl_s": 0})["status"] == 422
    assert api(sb, "POST", "/vx11/spawn", {"template": "sleeper", "ttl_s": 10**6}
               )["status"] == 422
    assert api(sb, "POST", "/vx11/spawn", {"template": "nope", "ttl_s": 5})["status"] == 404
    assert api(sb, "DELETE", "/vx11/hijas/zzzzzzzzzz")["status"] == 404


def test_smoke_command_401_sweep_and_expiry(vx11):
    r = vx11.exec(["/opt/vx11d/bin/vx11ctl", "smoke", "--json", "--ttl", "2"], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["ok"], out
    sweep = next(c for c in out["checks"] if c["check"].startswith("401"))
    assert sweep["ok"] and int(sweep["check"].split()[-2]) >= 10


def test_stop_via_delete(vx11):
    sb = vx11
    h = api(sb, "POST", "/vx11/spawn", {"template": "sleeper", "ttl_s": 60})["body"]
    assert api(sb, "DELETE", f"/vx11/hijas/{h['id']}")["status"] == 202
    poll_for(lambda: api(sb, "GET", f"/vx11/hijas/{h['id']}")["body"]["status"] == "stopped",
             timeout=10, what="stopped")
    assert api(sb, "DELETE", f"/vx11/hijas/{h['id']}")["status"] == 409


def test_kill9_madre_hijas_still_expire_and_db_matches_within_5s(vx11):
    sb = vx11
    res = client(sb, "burst", "3", "sleeper", "4", "3")
    hs = [x["body"] for x in res]
    assert all(h["status"] == "running" for h in hs), hs
    n0 = int(show(sb, "vx11-madre.service", "NRestarts")["NRestarts"])
    kill9_madre(sb)
    # systemd enforces RuntimeMaxUSec without madre
    poll_for(lambda: not any(h["unit"] in snapshot(sb)["units"] for h in hs), timeout=10,
             what="units gone at expiry")
    gone_at = time.time()
    assert gone_at - max(h["expires_at"] for h in hs) < 3.0
    poll_for(lambda: int(show(sb, "vx11-madre.service", "NRestarts")["NRestarts"]) > n0
             and show(sb, "vx11-madre.service", "ActiveState")["ActiveState"] == "active",
             timeout=15, what="madre restarted")
    poll_for(lambda: all(r["status"] in ("expired", "lost") for r in snapshot(sb)["rows"]
                         if r["id"] in {h["id"] for h in hs}), timeout=5,
             what="DB matches systemd within 5 s")
    assert live_consistent(snapshot(sb))


def test_kill9_madre_mid_burst_leaves_no_untracked_hija(vx11):
    sb = vx11
    proc = subprocess.Popen(["nsenter", "-t", str(sb.leader()), "-a", PY, CLIENT, "burst",
                             "30", "sleeper", "30", "6"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        poll_for(lambda: len(snapshot(sb)["units"]) >= 3, timeout=20, what="burst started")
        kill9_madre(sb)
        out, _err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    res = json.loads(out.strip().splitlines()[-1])
    assert len(res) == 30
    poll_for(lambda: show(sb, "vx11-madre.service", "ActiveState")["ActiveState"] == "active",
             timeout=15, what="madre back")
    snap = poll_for(lambda: (s := snapshot(sb)) and live_consistent(s) and s, timeout=10,
                    what="no unit without a live row and no live row without a unit")
    ids = {x["body"]["id"] for x in res if isinstance(x["body"], dict) and "id" in x["body"]}
    rows = {r["id"]: r for r in snap["rows"]}
    assert ids <= set(rows), "a spawn the gateway accepted has no row"
    for hid in ids:
        assert rows[hid]["status"] in ("running", "lost", "failed"), rows[hid]
    sysctl(sb, "stop", "vx11-hija-*", check=False)
    poll_for(lambda: all(r["status"] not in ("running", "starting", "requested")
                         for r in snapshot(sb)["rows"]), timeout=15, what="all stopped")


def test_activation_window_without_hermes_unit(vx11):
    sb = vx11
    r = sb.exec(["/opt/vx11d/bin/vx11ctl", "activate", "switch", "--for", "2s", "--json"],
                timeout=30)
    assert r.returncode == 0, r.stderr
    pol = api(sb, "GET", "/vx11/policy")["body"]
    assert [w["component"] for w in pol["windows"]] == ["switch"]
    poll_for(lambda: api(sb, "GET", "/vx11/policy")["body"]["windows"] == [], timeout=6,
             what="window expired")
    r = sb.exec(["/opt/vx11d/bin/vx11ctl", "activate", "hermes", "--json"], timeout=30)
    assert r.returncode != 0  # --for is required


def test_madre_status_line_and_metrics_pass_promtool(vx11):
    sb = vx11
    api(sb, "POST", "/vx11/spawn", {"template": "sleeper", "ttl_s": 3})
    poll_for(lambda: "running, next expiry in" in show(sb, "vx11-madre.service", "StatusText")
             ["StatusText"], timeout=5, what="STATUS line")
    for port in (9712, 9711):
        r = sb.exec(["sh", "-c", f"curl -sf http://127.0.0.1:{port}/metrics | "
                     "promtool check metrics"], timeout=30)
        assert r.returncode == 0, (port, r.stdout, r.stderr)
    m = sb.exec(["curl", "-sf", "http://127.0.0.1:9712/metrics"], timeout=30).stdout
    for name in ("vx11_hijas_running", "vx11_hijas_spawned_total",
                 'vx11_hijas_ended_total{reason="expired",template="sleeper"}',
                 "vx11_hija_spawn_duration_seconds_bucket", "vx11_activations_live"):
        assert name in m, name


def test_madre_unit_security_exposure(vx11):
    r = vx11.exec(["systemd-analyze", "security", "--no-pager", "vx11-madre.service"],
                  timeout=30)
    line = [ln for ln in r.stdout.splitlines() if "Overall exposure level" in ln]
    assert line, r.stdout[-500:]
    score = float(line[0].split("level for vx11-madre.service:")[1].split()[0])
    assert score <= 5.0, line[0]


def test_a_dynamic_user_template_gets_its_own_uid_and_the_spawn_is_notified(vx11):
    sb = vx11
    r = api(sb, "POST", "/vx11/spawn", {"template": "isolated", "ttl_s": 2})
    assert r["status"] == 201 and r["body"]["status"] == "running", r
    h = r["body"]
    props = show(sb, h["unit"], "DynamicUser", "User", "MainPID")
    assert props["DynamicUser"] == "yes" and props["User"] != "vx11-hija"
    uid = sb.exec(["stat", "-c", "%u", f"/proc/{h['main_pid']}"], timeout=10).stdout
    assert 61184 <= int(uid) <= 65519, uid  # systemd's DynamicUser range
    # five spawns in a row, each answered 201 running (the settle notice itself is
    # tests/integration/test_spawn_settle.py; its latency is bench/spawn.py's p50_ms)
    res = client(sb, "burst", "5", "sleeper", "2", "1")
    assert [x["status"] for x in res] == [201] * 5, res
    assert all(x["body"]["status"] == "running" for x in res), res


READER = """import json
from vx11d import units
from vx11d.gateway.policy import _unit_states
bus = units.open_bus()
print(json.dumps({"absent": units.read(bus, "vx11-nosuch.service"),
                  "absent_loaded": units.read(bus, "vx11-nosuch.service", load=True),
                  "madre": units.read(bus, "vx11-madre.service"),
                  "health": _unit_states()}))
"""


def _systemctl_show(sb, names: list[str], props: list[str]) -> list[dict[str, str]]:
    r = sb.exec(["systemctl", "show", "-p", ",".join(props), *names], timeout=30)
    assert r.returncode == 0, r.stderr
    return [dict(line.split("=", 1) for line in block.splitlines())
            for block in r.stdout.strip().split("\n\n")]


def test_the_core_unit_reader_agrees_with_systemctl_show(vx11):
    """vx11d.units (D-Bus) is what vx11ctl status, /health and madre read: the same
    values ``systemctl show`` prints (read until two readings agree: states move)."""
    from vx11d.ctl.units import PROPS

    def ctl_matches():
        r = vx11.exec(["/opt/vx11d/bin/vx11ctl", "status", "--json"], timeout=60)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)["units"]
        names = [u["Id"] for u in got]
        assert {"vx11-madre.service", "vx11-gateway.service"} <= set(names), names
        return got == _systemctl_show(vx11, names, PROPS)

    poll_for(ctl_matches, timeout=30, interval=0.5, what="vx11ctl status == systemctl show")

    def core_matches():
        r = vx11.exec([PY, "-c", READER], timeout=60)
        assert r.returncode == 0, r.stderr[-2000:]
        got = json.loads(r.stdout)
        assert got["absent"] is None  # not loaded: None, as madre expects
        assert got["absent_loaded"]["LoadState"] == "not-found"
        ref = _systemctl_show(vx11, ["vx11-madre.service"],
                              ["ActiveState", "SubState", "MainPID", "StatusText"])[0]
        madre = got["madre"]
        health = got["health"]["vx11-madre.service"]
        return ({k: str(madre[k]) for k in ref} == ref
                and health == {"active_state": ref["ActiveState"], "status": ref["StatusText"]})

    poll_for(core_matches, timeout=30, interval=0.5, what="vx11d.units == systemctl show")
