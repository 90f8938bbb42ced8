"""The default protected set and the circuit breaker that stops enforcement (issue 14),
on fixture /proc trees (PIDs above PID_MAX_LIMIT: nothing real can be signalled)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from vx11d.ctl.configcmd import broad_rules
from vx11d.db import Database
from vx11d.reaper.daemon import ReaperService
from vx11d.reaper.metrics import ReaperMetrics
from vx11d.reaper.proc import scan

from .procfixture import BASE, FakeProc, cfg

HOST = [  # (comm, cgroup) of what a host can't lose
    ("dbus-daemon", "/system.slice/dbus.service"),
    ("systemd-logind", "/system.slice/systemd-logind.service"),
    ("systemd-journal", "/system.slice/systemd-journald.service"),
    ("agetty", "/system.slice/system-getty.slice/getty@tty1.service"),
    ("agetty", "/system.slice/console-getty.service"),
    ("sshd", "/system.slice/ssh.service"),
    ("sshd", "/user.slice/user-0.slice/session-3.scope"),  # a session's sshd, by name
    ("systemd", "/user.slice/user-0.slice/user@0.service/init.scope"),
    ("(sd-pam)", "/user.slice/user-0.slice/user@0.service/init.scope"),
    ("python3", "/system.slice/vx11-madre.service"),
    ("python3", "/system.slice/vx11-gateway.service"),
    ("login", "/user.slice/user-0.slice/session-c1.scope"),
]
CATCHALL = """
reaper:
  rules: [{name: catchall, comm: ".*", action: terminate}]
"""


def host_tree(tmp_path: Path, bait: int) -> FakeProc:
    fp = FakeProc(tmp_path / "proc")
    fp.add(1, "systemd", ppid=0, cgroup="/init.scope")
    for i, (comm, cg) in enumerate(HOST, 1):
        fp.add(BASE + i, comm, cgroup=cg)
    for i in range(bait):
        fp.add(BASE + 100 + i, "bait", cgroup="/user.slice/user-0.slice/session-3.scope")
    return fp


def service(fp: FakeProc, text: str, db=None, breaker_file=None
            ) -> tuple[ReaperService, CollectorRegistry]:
    reg = CollectorRegistry()
    return ReaperService(cfg(text), db, ReaperMetrics(reg), proc_path=fp.path,
                         breaker_file=breaker_file), reg


def test_default_protected_set_survives_a_match_everything_rule(tmp_path):
    fp = host_tree(tmp_path, bait=2)
    svc, _ = service(fp, CATCHALL)
    rep = svc.evaluator.evaluate(scan(fp.path))
    assert sorted(f.proc.comm for f in rep.findings) == ["bait", "bait"]
    assert rep.protected == len(HOST)


def test_extra_protected_lists_add_to_the_defaults(tmp_path):
    fp = host_tree(tmp_path, bait=0)
    fp.add(BASE + 50, "myapp", cgroup="/system.slice/myapp.service")
    fp.add(BASE + 51, "precious", cgroup="/user.slice/user-0.slice/session-3.scope")
    fp.add(BASE + 52, "other", cgroup="/user.slice/user-0.slice/session-3.scope")
    svc, _ = service(fp, CATCHALL.replace("reaper:\n", "reaper:\n  extra_protected_units: "
                                          "[myapp.service]\n  extra_protected_comms: "
                                          "[prec*]\n"))
    rep = svc.scan_and_act()
    assert [f.proc.comm for f in rep.findings] == ["other"]


def test_a_rule_matching_too_many_stops_enforcement_until_rearmed(tmp_path, dbpath):
    fp = host_tree(tmp_path, bait=20)
    state = tmp_path / "breaker.json"
    db = Database(dbpath)
    svc, reg = service(fp, CATCHALL, db=db, breaker_file=str(state))
    svc.tick()
    assert svc.signals_sent == 0
    outcomes = {r[0] for r in db.query("SELECT outcome FROM reaper_actions")}
    assert outcomes == {"enforcement_stopped"}  # nothing was even tried
    assert reg.get_sample_value("vx11_reaper_enforcement_stopped") == 1
    assert reg.get_sample_value("vx11_reaper_breaker_stops_total") == 1
    status = svc.status()
    assert status.startswith("ENFORCEMENT STOPPED: rule catchall would signal 20 of 33 "
                             "processes") and "vx11ctl reaper rearm" in status, status
    assert json.loads(state.read_text())["rule"] == "catchall"
    # a reload (config management, say) does not re-arm it, nor does a restart
    svc.reload(cfg(CATCHALL))
    assert svc.breaker.open
    again, reg2 = service(fp, CATCHALL, breaker_file=str(state))
    assert again.breaker.open and reg2.get_sample_value("vx11_reaper_enforcement_stopped") == 1
    # re-armed (what `vx11ctl reaper rearm` does) with a narrower rule: enforcement resumes
    state.unlink()
    svc.reload(cfg(CATCHALL.replace('".*"', '"^bait$"').replace(
        "reaper:\n", "reaper:\n  breaker_max_share: 1.0\n  breaker_min_matches: 100\n")))
    assert not svc.breaker.open
    assert reg.get_sample_value("vx11_reaper_enforcement_stopped") == 0
    svc.clock = lambda: 10**9
    svc.tick()
    rows = db.query("SELECT outcome FROM reaper_actions ORDER BY id DESC LIMIT 20")
    assert {r[0] for r in rows} == {"vanished"}  # tried (fixture PIDs do not exist)


def test_config_check_warns_about_rules_that_match_everything(tmp_path):
    c = cfg("""
reaper:
  rules:
    - {name: all, comm: ".*", action: terminate}
    - {name: all2, cmdline: "", cgroup: "/?", action: observe}
    - {name: fine, comm: "^node$", action: terminate}
    - {name: user, comm: ".*", user: nobody}
""")
    warnings = broad_rules(c)
    assert len(warnings) == 2
    assert warnings[0].startswith("reaper.rules[0] (all): matches every process")
    assert "reaper.rules[1] (all2)" in warnings[1]
    path = tmp_path / "vx11.yml"
    path.write_text("reaper:\n  rules: [{name: all, comm: '.*', action: terminate}]\n")
    r = subprocess.run([sys.executable, "-m", "vx11d.ctl.main", "config", "check", "--path",
                        str(path), "--json"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["warnings"][0].startswith("reaper.rules[0] (all)")


def test_scan_tries_a_rule_that_is_not_enabled(tmp_path):
    fp = host_tree(tmp_path, bait=20)
    conf = tmp_path / "vx11.yml"
    conf.write_text(f"db:\n  path: {tmp_path / 'none.db'}\nreaper:\n  breaker_file: "
                    f"{tmp_path / 'b.json'}\n")
    r = subprocess.run([sys.executable, "-m", "vx11d", "reaper", "--scan-once", "--json",
                        "--proc", fp.path, "--rule",
                        "{name: try, comm: '.*', action: terminate}"],
                       env={**os.environ, "VX11_CONFIG": str(conf)}, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["tried_rules"] == ["try"]
    assert {f["comm"] for f in data["findings"]} == {"bait"}
    assert data["breaker"]["would_trip"].startswith("rule try would signal 20 of 33")
    assert not data["breaker"]["stopped"]
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "none.db").exists()


def test_many_ended_hijas_do_not_trip_the_breaker(tmp_path, dbpath):
    fp = FakeProc(tmp_path / "proc")
    fp.add(1, "systemd", ppid=0, cgroup="/init.scope")
    for i in range(15):  # no spawner_hijas rows: every one is a leftover to terminate
        fp.add(BASE + i, "sleep",
               cgroup=f"/vx11.slice/vx11-hijas.slice/vx11-hija-h{i:09d}.service")
    svc, reg = service(fp, "reaper: {}\n", db=Database(dbpath))
    svc.tick()
    assert not svc.breaker.open
    assert reg.get_sample_value("vx11_reaper_enforcement_stopped") == 0
    assert len([f for f in svc.report.findings if f.action == "terminate"]) == 15
