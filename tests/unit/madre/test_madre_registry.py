"""madre's state machine, reconcile, ports and windows against the fake systemd adapter."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from tests.fake_systemd import FakeSystemd
from vx11d import config, hijas
from vx11d.db import Database
from vx11d.madre.daemon import Metrics
from vx11d.madre.registry import Registry, check_readback, unit_properties
from vx11d.madre.windows import HERMES_UNIT, Windows

CFG = """
madre:
  port_range: [30000, 30002]
  backstop_grace: 2s
  templates:
    sleeper: {command: [/usr/bin/sleep, infinity], max_ttl: 60s}
    web: {command: [/usr/bin/python3, -m, http.server, "{port}"], needs_port: true}
    greet:
      command: [/usr/bin/echo, "hello {who}", "{n}"]
      args:
        who: {pattern: "^[a-z]{1,8}$", required: true}
        n: {type: int, min: 1, max: 5, default: "1"}
"""


class Clock:
    def __init__(self) -> None:
        self.t = 1_800_000_000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def env(dbpath, tmp_path):
    cfg = config.parse(CFG + f"gateway:\n  madre_wake_socket: {tmp_path}/madre.sock\n", "t.yml")
    db = Database(dbpath)
    sd = FakeSystemd()
    clock = Clock()
    m = Metrics(CollectorRegistry())
    reg = Registry(cfg, db, sd, m, clock=clock)
    yield cfg, db, sd, reg, clock, m
    sd.close()
    db.close()


def spawn(cfg, db, reg, sd, template="sleeper", ttl=10, args=None):
    row = hijas.request_spawn(db, cfg, template, ttl, args or {}, "test")
    reg.process_requests()
    reg.on_changes(sd.drain())
    return hijas.get(db, row["id"])


def events(db, hid):
    return [r[0] for r in db.query("SELECT event FROM events WHERE subject = ? ORDER BY id",
                                   (hid,))]


def test_spawn_runs_then_expires_with_full_audit_trail(env):
    cfg, db, sd, reg, _clock, m = env
    row = spawn(cfg, db, reg, sd)
    assert row["status"] == "running" and row["main_pid"]
    unit = sd.units[row["unit"]]
    assert unit["RuntimeMaxUSec"] == 10_000_000
    assert unit["CollectMode"] == "inactive-or-failed" and unit["Slice"] == "vx11-hijas.slice"
    sd.end(row["unit"], "timeout")
    reg.on_changes(sd.drain())
    row = hijas.get(db, row["id"])
    assert row["status"] == "expired" and row["result"] == "timeout"
    assert events(db, row["id"]) == ["hija_requested", "hija_spawned", "hija_running",
                                     "hija_expired"]
    assert m.ended.labels("sleeper", "expired")._value.get() == 1


@pytest.mark.parametrize(("result", "code", "status"), [("success", 0, "exited"),
                                                         # SIGTERM from a stop job or a
                                                         # shutdown: not "exited"
                                                         ("success", 15, "stopped"),
                                                         ("exit-code", 3, "failed"),
                                                         ("signal", 9, "failed")])
def test_end_reasons(env, result, code, status):
    cfg, db, sd, reg, _clock, _m = env
    row = spawn(cfg, db, reg, sd)
    sd.end(row["unit"], result, code)
    reg.on_changes(sd.drain())
    row = hijas.get(db, row["id"])
    assert (row["status"], row["exit_status"]) == (status, code)


@pytest.mark.parametrize(("result", "status", "code", "reason"), [
    ("timeout", 15, 2, "reached its TTL, stopped with SIGTERM"),
    ("timeout", 9, 2, "reached its TTL, killed by SIGKILL"),
    ("success", 0, 1, "exited with status 0"),
    ("exit-code", 3, 1, "exited with status 3 (systemd result exit-code)"),
    ("core-dump", 11, 3, "killed by SIGSEGV (core dumped) (systemd result core-dump)")])
def test_expiry_read_as_a_failure_exit_status_15_now_says_the_signal(
        env, caplog, result, status, code, reason):
    """Regression (issue 24 item 9): a normal expiry logged ``expired (result timeout,
    exit status 15)``: 15 is SIGTERM's number, not an exit status."""
    cfg, db, sd, reg, _clock, _m = env
    row = spawn(cfg, db, reg, sd)
    with caplog.at_level("INFO"):
        sd.end(row["unit"], result, status, code=code)
        reg.on_changes(sd.drain())
    row = hijas.get(db, row["id"])
    assert row["reason"] == reason
    said = [r.getMessage() for r in caplog.records if row["id"] in r.getMessage()]
    assert f"hija {row['id']} {row['status']}: {reason}" in said, said
    assert not any("exit status" in m for m in said), said


def test_a_stop_command_timing_out_after_an_early_exit_is_exited_not_expired(env):
    """Regression (the real-kernel tier, Debian 13 under emulation): a hija that exited 0
    50 s before its TTL got Result=timeout because its memory probe (ExecStopPost) ran
    past TimeoutStopSec, and madre recorded it expired."""
    cfg, db, sd, reg, clock, _m = env
    early = spawn(cfg, db, reg, sd, ttl=60)
    sd.end(early["unit"], "timeout", 0, code=1, exit_at=clock.t + 10)
    reg.on_changes(sd.drain())
    row = hijas.get(db, early["id"])
    assert (row["status"], row["exit_status"]) == ("exited", 0), row
    assert "stop commands ran past madre.stop_timeout" in row["reason"]
    assert row["ended_at"] == pytest.approx(clock.t + 10)
    # a hija that handles SIGTERM and exits 0 at its TTL did expire
    graceful = spawn(cfg, db, reg, sd, ttl=60)
    sd.end(graceful["unit"], "timeout", 0, code=1, exit_at=clock.t + 60)
    reg.on_changes(sd.drain())
    assert hijas.get(db, graceful["id"])["status"] == "expired"


def test_unit_removed_on_daemon_reload_is_not_an_end_upgrade_killed_hija(env):
    """Regression: the package upgrade's daemon-reload made systemd send UnitRemoved for a
    running hija; madre recorded it "exited" and the reaper then killed its process."""
    cfg, db, sd, reg, _clock, _m = env
    row = spawn(cfg, db, reg, sd)
    assert row["status"] == "running"
    sd._emit(row["unit"], removed=True)  # daemon-reload: removed, yet still active
    reg.on_changes(sd.drain())
    assert hijas.get(db, row["id"])["status"] == "running"
    assert row["unit"] in reg.tracked
    sd.end(row["unit"], "timeout", 15)  # and its real end is still recorded
    reg.on_changes(sd.drain())
    assert hijas.get(db, row["id"])["status"] == "expired"


def test_settle_before_exit_records_hijas_stopped_at_shutdown_reboot_lost(env):
    """Regression: at power-off the hijas stop just before madre gets SIGTERM; madre exited
    before their end signals arrived and the next boot recorded them "lost"."""
    cfg, db, sd, reg, _clock, _m = env
    gone, live = spawn(cfg, db, reg, sd), spawn(cfg, db, reg, sd)
    del sd.units[gone["unit"]]  # stopped and collected; its signals never came
    assert reg.settle_before_exit(timeout=0.1) == 1
    row = hijas.get(db, gone["id"])
    assert row["status"] == "stopped" and "while madre was stopping" in row["reason"]
    assert hijas.get(db, live["id"])["status"] == "running" and live["unit"] in reg.tracked


def test_ports_are_allocated_and_released(env):
    cfg, db, sd, reg, _clock, _m = env
    rows = [spawn(cfg, db, reg, sd, "web") for _ in range(3)]
    assert sorted(r["port"] for r in rows) == [30000, 30001, 30002]
    assert all(f"PORT={r['port']}" in sd.units[r["unit"]]["Environment"]
               for r in rows)
    full = spawn(cfg, db, reg, sd, "web")
    assert full["status"] == "failed" and "in use" in full["reason"]
    sd.end(rows[1]["unit"], "timeout")
    reg.on_changes(sd.drain())
    again = spawn(cfg, db, reg, sd, "web")
    assert again["status"] == "running" and again["port"] == 30001


def test_args_are_validated_and_substituted_never_a_shell(env):
    cfg, db, sd, reg, _clock, _m = env
    row = spawn(cfg, db, reg, sd, "greet", args={"who": "ana", "n": 3})
    (_argv0, argv, _), = sd.units[row["unit"]]["ExecStart"]
    assert argv == ["/usr/bin/echo", "hello ana", "3"]
    tpl = cfg.madre.templates["greet"]
    for bad in ({}, {"who": "Ana; rm -rf /"}, {"who": "ana", "n": 9}, {"who": "ana", "x": 1},
                {"who": ["a"]}, {"who": "ana", "n": True}, "notadict"):
        with pytest.raises(hijas.InputError):
            hijas.check_args(tpl, bad)


def test_ttl_defaults_to_the_templates_default_ttl_and_is_bounded(env):
    """Regression: the template's default_ttl did nothing (ttl_s is required)."""
    cfg, db, _sd, _reg, _clock, _m = env
    assert hijas.request_spawn(db, cfg, "sleeper", None, {}, "t")["ttl_s"] == 60
    low = config.parse("madre:\n  min_ttl: 2m\n  templates:\n    s: {command: [/bin/true], "
                       "default_ttl: 30s}\n", "t.yml")
    with pytest.raises(hijas.InputError, match=r"default_ttl 30s is below madre\.min_ttl"):
        hijas.request_spawn(db, low, "s", None, {}, "t")
    for ttl in (0, -1, 61, "10", True, float("nan")):
        with pytest.raises(hijas.InputError):
            hijas.request_spawn(db, cfg, "sleeper", ttl, {}, "t")
    with pytest.raises(hijas.NotFound):
        hijas.request_spawn(db, cfg, "nope", 10, {}, "t")


def test_property_that_does_not_stick_fails_the_spawn_loudly(dbpath):
    cfg = config.parse(CFG, "t.yml")
    db = Database(dbpath)
    sd = FakeSystemd(ignore=("RuntimeMaxUSec",))
    reg = Registry(cfg, db, sd, Metrics(CollectorRegistry()))
    row = spawn(cfg, db, reg, sd)
    assert row["status"] == "failed" and "RuntimeMaxUSec" in row["reason"]
    assert row["unit"] not in sd.units  # stopped
    sd.close()


def test_a_failed_readback_stops_the_unit_and_fails_the_row(env):
    cfg, db, sd, reg, _clock, _m = env
    sd.fail_readback = True
    row = spawn(cfg, db, reg, sd)
    assert row["status"] == "failed" and "cannot read them back" in row["reason"]
    assert row["unit"] not in sd.units and ("stop", row["unit"]) in sd.calls
    assert row["unit"] not in reg.tracked


def test_readback_compares_dbus_values():
    cfg = config.parse(CFG, "t.yml")
    props = unit_properties(cfg, cfg.madre.templates["sleeper"], "abc", ["/bin/true"], 5, 20000)
    got = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in props.items()}
    got["Environment"] = ["VX11_HIJA_ID=abc", "PORT=20000", "OTHER=1"]
    assert check_readback(props, got) == []
    got["TasksMax"] = 2**64 - 1
    assert check_readback(props, got)[0].startswith("TasksMax")


def test_systemd_refusal_fails_the_row(env):
    cfg, db, sd, reg, _clock, _m = env
    row = hijas.request_spawn(db, cfg, "sleeper", 10, {}, "t")
    sd.fail_start.add(row["unit"])
    reg.process_requests()
    row = hijas.get(db, row["id"])
    assert row["status"] == "failed" and "refused" in row["reason"]


def test_stop_request_before_and_after_start(env):
    cfg, db, sd, reg, _clock, _m = env
    early = hijas.request_spawn(db, cfg, "sleeper", 10, {}, "t")
    hijas.request_stop(db, early["id"], "t")
    reg.process_requests()
    assert hijas.get(db, early["id"])["status"] == "stopped"
    assert early["unit"] not in [c[1] for c in sd.calls]
    row = spawn(cfg, db, reg, sd)
    hijas.request_stop(db, row["id"], "t")
    reg.process_requests()
    reg.on_changes(sd.drain())
    assert hijas.get(db, row["id"])["status"] == "stopped"
    with pytest.raises(hijas.Conflict):
        hijas.request_stop(db, row["id"], "t")
    with pytest.raises(hijas.NotFound):
        hijas.request_stop(db, "zzzzzzzzzz", "t")


def test_backstop_stops_a_hija_past_expiry_plus_grace(env):
    cfg, db, sd, reg, clock, _m = env
    row = spawn(cfg, db, reg, sd, ttl=5)
    clock.t += 6  # past expiry, within grace
    reg.backstop()
    assert row["unit"] in sd.units
    clock.t += 2
    reg.backstop()
    reg.on_changes(sd.drain())
    row = hijas.get(db, row["id"])
    assert row["status"] == "expired" and "backstop" in row["reason"]


def test_reconcile_lost_rows_adopted_units_and_orphans(env):
    cfg, db, sd, reg, clock, _m = env
    gone = spawn(cfg, db, reg, sd)
    kept = spawn(cfg, db, reg, sd)
    del sd.units[gone["unit"]]  # collected while madre was down
    sd.units["vx11-hija-orphan0000.service"] = {"ActiveState": "active", "SubState": "running"}
    fresh = Registry(cfg, db, sd, Metrics(CollectorRegistry()), clock=clock)  # a restart
    fixed = fresh.reconcile()
    assert fixed == {"lost": 1, "ended": 0, "adopted": 1, "orphans": 1, "recreated": 0}
    assert hijas.get(db, gone["id"])["status"] == "lost"
    assert "vx11-hija-orphan0000.service" not in sd.units
    assert db.query("SELECT count(*) FROM events WHERE event = 'hija_orphan_stopped'")[0][0] == 1
    sd.end(kept["unit"], "timeout")
    fresh.on_changes(sd.drain())
    assert hijas.get(db, kept["id"])["status"] == "expired"


def test_reconcile_settles_a_row_left_starting_by_a_crash(env):
    cfg, db, sd, _reg, _clock, _m = env
    row = hijas.request_spawn(db, cfg, "sleeper", 10, {}, "t")
    db.write(lambda c: c.execute("UPDATE spawner_hijas SET status='starting' WHERE id=?",
                                 (row["id"],)))
    Registry(cfg, db, sd, Metrics(CollectorRegistry())).reconcile()
    assert hijas.get(db, row["id"])["status"] == "lost"


def test_template_removed_from_config_fails_the_request(env):
    cfg, db, _sd, reg, _clock, _m = env
    row = hijas.request_spawn(db, cfg, "sleeper", 10, {}, "t")
    reg.cfg = config.parse("madre: {templates: {}}", "t.yml")
    reg.process_requests()
    assert hijas.get(db, row["id"])["status"] == "failed"


def test_windows_expire_and_drive_hermes(env):
    cfg, db, sd, _reg, _clock, m = env
    win = Windows(cfg, db, sd, m)
    win.tick()  # no unit installed, no window: nothing happens
    sd.installed.add(HERMES_UNIT)
    hijas.activate(db, cfg, "hermes", 3600, "t")
    win.tick()
    assert ("start", HERMES_UNIT) in sd.calls
    hijas.deactivate(db, "hermes", "t")
    win.tick()
    assert ("stop", HERMES_UNIT) in sd.calls
    a = hijas.activate(db, cfg, "switch", 60, "t")
    db.write(lambda c: c.execute("UPDATE activations SET expires_at = created_at + 0.001 "
                                 "WHERE id = ?", (a["id"],)))
    Windows(cfg, db, sd, m, clock=lambda: time.time() + 1).tick()
    row = db.query("SELECT ended_reason FROM activations WHERE id = ?", (a["id"],))[0]
    assert row[0] == "expired"
    for bad in (None, 0, -5, cfg.madre.max_activation + 1, "1h", True):
        with pytest.raises(hijas.InputError):
            hijas.activate(db, cfg, "hermes", bad, "t")
    with pytest.raises(hijas.NotFound):
        hijas.activate(db, cfg, "llama", 60, "t")


def test_stored_args_are_json(env):
    cfg, db, sd, reg, _clock, _m = env
    row = spawn(cfg, db, reg, sd, "greet", args={"who": "bo"})
    raw = db.query("SELECT args FROM spawner_hijas WHERE id = ?", (row["id"],))[0][0]
    assert json.loads(raw) == {"who": "bo", "n": "1"}


def test_config_refuses_a_bad_sandboxing_level():
    with pytest.raises(config.ConfigError, match="sandboxing"):
        config.parse("madre: {templates: {x: {command: [/bin/true], sandboxing: loose}}}",
                     "t.yml")


def test_strict_sandboxing_adds_mount_namespace_protections():
    cfg = config.parse("madre: {templates: {a: {command: [/bin/true]}, "
                       "b: {command: [/bin/true], sandboxing: basic}}}", "t.yml")
    strict = unit_properties(cfg, cfg.madre.templates["a"], "x", ["/bin/true"], 5, None)
    basic = unit_properties(cfg, cfg.madre.templates["b"], "x", ["/bin/true"], 5, None)
    assert strict["ProtectSystem"] == b"strict" and "ProtectSystem" not in basic
    for p in (strict, basic):
        assert p["User"] == b"vx11-hija" and "DynamicUser" not in p
        assert p["NoNewPrivileges"] is True and p["CapabilityBoundingSet"] == 0


def test_hijas_run_as_the_static_user_unless_a_template_asks_for_dynamic_user():
    cfg = config.parse("madre: {templates: {s: {command: [/bin/true], sandboxing: basic}, "
                       "d: {command: [/bin/true], sandboxing: basic, dynamic_user: true}}}",
                       "t.yml")
    assert cfg.madre.hija_user == "vx11-hija"
    s = unit_properties(cfg, cfg.madre.templates["s"], "x", ["/bin/true"], 5, None)
    d = unit_properties(cfg, cfg.madre.templates["d"], "x", ["/bin/true"], 5, None)
    assert s["User"] == b"vx11-hija" and "DynamicUser" not in s
    assert d["DynamicUser"] is True and "User" not in d
    # an empty hija_user: DynamicUser for every template (the former default)
    cfg = config.parse("madre: {hija_user: '', templates: {s: {command: [/bin/true]}}}",
                       "t.yml")
    p = unit_properties(cfg, cfg.madre.templates["s"], "x", ["/bin/true"], 5, None)
    assert p["DynamicUser"] is True and "User" not in p


@pytest.mark.parametrize("user", ["root", "vx11", "Bad User", "x" * 40])
def test_config_refuses_a_hija_user_that_is_privileged_or_not_a_name(user):
    with pytest.raises(config.ConfigError, match="hija_user"):
        config.parse(f"madre: {{hija_user: '{user}'}}", "t.yml")


def test_unit_path_escapes_like_systemd():
    from vx11d.units import unit_path

    assert unit_path("vx11-hija-ab12.service") == \
        b"/org/freedesktop/systemd1/unit/vx11_2dhija_2dab12_2eservice"
    assert unit_path("") == b"/org/freedesktop/systemd1/unit/_"
    # a leading digit is escaped too (sd_bus_path_encode), which the hand-written
    # escaping this replaced got wrong
    assert unit_path("1abc.service") == b"/org/freedesktop/systemd1/unit/_31abc_2eservice"


def test_reconcile_applies_queued_end_signals_before_calling_a_row_lost(env):
    cfg, db, sd, reg, _clock, _m = env
    row = spawn(cfg, db, reg, sd, ttl=5)
    sd.end(row["unit"], "timeout")  # ended and collected; signals not yet drained
    reg.reconcile()
    assert hijas.get(db, row["id"])["status"] == "expired"


def test_the_hija_signal_filter_prefix_is_the_escaped_unit_prefix():
    from vx11d.madre.systemd import HIJA_PATH_PREFIX
    from vx11d.units import unit_path

    assert unit_path("vx11-hija-abcdefghij.service").startswith(HIJA_PATH_PREFIX)
    assert not unit_path("vx11-bench-1.service").startswith(HIJA_PATH_PREFIX)


@pytest.mark.parametrize("level", ["basic", "strict"])
def test_every_level_filters_syscalls_namespaces_and_families_by_need_of_a_port(level):
    cfg = config.parse(f"madre: {{templates: {{n: {{command: [/bin/true], sandboxing: {level}}}, "
                       f"p: {{command: [/bin/true], sandboxing: {level}, needs_port: true}}}}}}",
                       "t.yml")
    n = unit_properties(cfg, cfg.madre.templates["n"], "x", ["/bin/true"], 5, None)
    p = unit_properties(cfg, cfg.madre.templates["p"], "x", ["/bin/true"], 5, 20000)
    for props in (n, p):
        assert props["SystemCallFilter"] == (True, [b"@system-service"])
        assert props["SystemCallArchitectures"] == [b"native"]
        assert props["RestrictNamespaces"] == 0 and props["UMask"] == 0o077
    assert n["RestrictAddressFamilies"] == (True, [b"AF_UNIX"])
    assert b"AF_INET" in p["RestrictAddressFamilies"][1]
    assert n.get("PrivateNetwork") is (True if level == "strict" else None)
    assert "PrivateNetwork" not in p
    from vx11d.madre.systemd import signature_of
    for name in n:  # every property has a D-Bus signature (pystemd's or ours)
        assert signature_of(name)


def _report(reg, hid, oom_kill, peak=33554432, limit=33554432):
    """What the unit's ExecStopPost memory probe writes before systemd removes the cgroup."""
    d = Path(reg.ends_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / hid).write_text(f"oom_kill {oom_kill}\npeak {peak}\nlimit {limit}\nresult signal\n")


def test_oom_kill_on_cgroup_v1_is_recorded_as_oom_with_limit_and_peak(env):
    """v1: systemd says only Result=signal, status 9; the cgroup's OOM-kill count decides."""
    cfg, db, sd, reg, _clock, m = env
    row = spawn(cfg, db, reg, sd)
    props = sd.units[row["unit"]]
    assert props["ExecStopPostEx"][0][2] == ["privileged", "ignore-failure", "no-env-expand"]
    _report(reg, row["id"], 1, peak=33550336)
    sd.end(row["unit"], "signal", 9)
    reg.on_changes(sd.drain())
    row = hijas.get(db, row["id"])
    assert (row["status"], row["result"], row["exit_status"]) == ("oom", "signal", 9)
    assert (row["memory_max"], row["memory_peak"]) == (33554432, 33550336)
    assert row["reason"].startswith("killed by the kernel: out of memory (peak 32.0M of its "
                                    "32M limit")
    assert events(db, row["id"])[-1] == "hija_oom_killed"
    assert m.ended.labels("sleeper", "oom")._value.get() == 1
    assert not (Path(reg.ends_dir) / row["id"]).exists()


def test_a_plain_sigkill_is_not_an_oom_kill(env):
    cfg, db, sd, reg, _clock, m = env
    row = spawn(cfg, db, reg, sd)
    _report(reg, row["id"], 0, peak=1 << 20)
    sd.end(row["unit"], "signal", 9)
    reg.on_changes(sd.drain())
    row = hijas.get(db, row["id"])
    assert (row["status"], row["memory_peak"]) == ("failed", 1 << 20)
    assert m.ended.labels("sleeper", "oom")._value.get() == 0


def test_oom_kill_on_cgroup_v2_needs_no_report(env):
    cfg, db, sd, reg, _clock, _m = env
    row = spawn(cfg, db, reg, sd)
    sd.end(row["unit"], "oom-kill", 9)
    reg.on_changes(sd.drain())
    assert hijas.get(db, row["id"])["status"] == "oom"


def test_reconcile_settles_a_unit_gone_while_madre_was_down_as_oom_from_its_report(env):
    cfg, db, sd, reg, _clock, _m = env
    row = spawn(cfg, db, reg, sd)
    _report(reg, row["id"], 2)
    del sd.units[row["unit"]]
    reg.tracked.clear()
    reg.reconcile()
    row = hijas.get(db, row["id"])
    assert row["status"] == "oom" and "2 OOM kills" in row["reason"]


def test_reconcile_recreates_the_row_of_a_running_hija_a_restored_db_lacks(env):
    """Issue 21: after `vx11ctl db restore` of a backup older than a hija, madre's
    restart stopped the hija as an orphan; now its row is re-created from systemd."""
    cfg, db, sd, reg, clock, _m = env
    row = spawn(cfg, db, reg, sd, template="web", ttl=30)
    sd.units[row["unit"]]["ActiveEnterTimestamp"] = int(clock.t * 1e6)
    db.write(lambda c: (c.execute("PRAGMA foreign_keys=OFF"),
                        c.execute("DELETE FROM spawner_hijas")))  # the backup lacks it
    fresh = Registry(cfg, db, sd, Metrics(CollectorRegistry()), clock=clock)
    fixed = fresh.reconcile()
    assert fixed["recreated"] == 1 and fixed["orphans"] == 0, fixed
    got = hijas.get(db, row["id"])
    assert got["status"] == "running" and got["template"] == "web"
    assert got["port"] == row["port"] and got["ttl_s"] == 30
    assert got["expires_at"] == pytest.approx(clock.t + 30)
    assert row["unit"] in sd.units
    sd.end(row["unit"], "timeout")
    fresh.on_changes(sd.drain())
    assert hijas.get(db, row["id"])["status"] == "expired"
