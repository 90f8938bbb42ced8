"""The package's life on one fresh Debian 12 host, in order: install, smoke, hardening,
bad edits, a reboot, remove, purge. Each test is one step a sysadmin takes and checks
what they would check; a step fails at once if an earlier one left the host broken.
"""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.support import poll_for
from vx11d.ctl import cgroups

from .conftest import ADMIN_CONFIG_SH, journal, run, show, sql, vx11_processes

# the first test of a session may build both packages and the image (minutes)
pytestmark = [pytest.mark.host, pytest.mark.timeout(1800)]

DAEMONS = ["vx11-madre.service", "vx11-reaper.service", "vx11-gateway.service"]
ENABLED = ["vx11.target", "vx11-gateway.socket", "vx11-rotate.timer"]
_steps: list[str] = []


def step_after(*needed: str) -> None:
    """Fail (not skip) a step whose precondition step did not pass."""
    missing = [n for n in needed if n not in _steps]
    assert not missing, f"earlier step(s) failed: {', '.join(missing)}"


def token_sha(host) -> str:
    return run(host, "sha256sum", "/etc/vx11/token").stdout.split()[0]


def test_apt_install_creates_users_dirs_token_and_starts_the_set(fresh_host, debs):
    host = fresh_host
    deb = f"/root/{debs['current'].name}"
    r = run(host, "apt-get", "install", "-y", "--no-install-recommends", deb)
    token = run(host, "cat", "/etc/vx11/token").stdout.strip()
    assert len(token) >= 32 and token not in r.stdout + r.stderr  # never printed
    assert "install ok installed" in run(host, "dpkg", "-s", "vx11d").stdout
    # system users and dirs from sysusers.d / tmpfiles.d
    assert run(host, "getent", "passwd", "vx11").stdout.split(":")[6].strip() \
        == "/usr/sbin/nologin"
    assert run(host, "getent", "passwd", "vx11-hija").returncode == 0
    assert "vx11" not in run(host, "id", "-nG", "vx11-hija").stdout.split()
    st = run(host, "stat", "-c", "%a %U %G %s", "/etc/vx11/token").stdout.split()
    assert st[:3] == ["600", "root", "root"], st
    assert run(host, "stat", "-c", "%G", "/var/lib/vx11").stdout.strip() == "vx11"
    assert run(host, "stat", "-c", "%a %G", "/etc/vx11/vx11.yml").stdout.split() \
        == ["640", "vx11"]
    # enabled the Debian way (deb-systemd-helper keeps a record) and started
    for unit in ENABLED:
        assert run(host, "systemctl", "is-enabled", unit).stdout.strip() == "enabled", unit
        assert run(host, "test", "-e",
                   f"/var/lib/systemd/deb-systemd-helper-enabled/{unit}.dsh-also"
                   ).returncode == 0, unit
    poll_for(lambda: run(host, "systemctl", "is-active", "vx11.target", "vx11-madre.service",
                         "vx11-reaper.service", "vx11-gateway.socket", ok=False
                         ).stdout.split() == ["active"] * 4, 60, what="the set active")
    assert run(host, "vx11ctl", "db", "check").stdout.strip().endswith(": ok")
    _steps.append("install")


def test_limits_are_enforced_on_the_fresh_host(fresh_host):
    """The host boots with delegated cgroup controllers: MemoryMax/TasksMax/CPUQuota of a
    unit reach the kernel (measured by vx11d.ctl.cgroups.probe)."""
    seen = cgroups.probe(lambda argv: fresh_host.exec(argv, timeout=120))
    assert seen == {"memory": True, "pids": True, "cpu": True}, seen


def test_reinstall_keeps_the_token(fresh_host, debs):
    step_after("install")
    before = token_sha(fresh_host)
    run(fresh_host, "apt-get", "install", "-y", "--reinstall", f"/root/{debs['current'].name}")
    assert token_sha(fresh_host) == before
    _steps.append("reinstall")


def test_enable_now_then_smoke_passes(fresh_host):
    step_after("install")
    host = fresh_host
    run(host, "sh", "-c", ADMIN_CONFIG_SH)  # a template to spawn, an audit root
    run(host, "vx11ctl", "config", "check")
    run(host, "systemctl", "enable", "--now", "vx11.target")
    run(host, "systemctl", "try-reload-or-restart", "vx11-madre.service",
        "vx11-gateway.service")
    poll_for(lambda: "config_reloaded" in {e.get("VX11_EVENT") for e in
                                          journal(host, "-u", "vx11-madre.service")},
             30, what="madre reloaded the admin's templates")
    r = run(host, "vx11ctl", "smoke", timeout=120)
    assert r.stdout.strip().endswith("smoke passed"), r.stdout
    _steps.append("smoke")


def test_what_the_sysadmin_reads_has_no_epoch_floats_or_reprs(fresh_host):
    """Regression: madre's journal said expires_at=1796081886.987424 and port None;
    vx11ctl status printed hijas {'expired': 1}."""
    step_after("smoke")
    host = fresh_host
    status = run(host, "vx11ctl", "status").stdout
    listing = run(host, "vx11ctl", "hijas", "list").stdout
    madre = [e["MESSAGE"] for e in journal(host, "SYSLOG_IDENTIFIER=vx11-madre")]
    assert any(" expired" in m for m in madre), madre
    for text in [status, listing, *madre]:
        assert not re.search(r"\b1[7-9]\d{8}\.\d", text), text
        assert "None" not in text and "{'" not in text, text
    assert re.search(r"hijas \d+ expired", status), status


def _goal(host, unit: str) -> float:
    text = run(host, "cat", f"/usr/lib/systemd/system/{unit}").stdout
    m = re.search(r"systemd-analyze security goal: exposure <= ([\d.]+)", text)
    assert m, f"{unit} states no exposure goal"
    return float(m.group(1))


@pytest.mark.parametrize("unit", ["vx11-gateway.service", "vx11-madre.service",
                                  "vx11-reaper.service", "vx11-rotate.service",
                                  "vx11-hermes.service"])
def test_security_exposure_within_the_unit_files_goal(fresh_host, unit):
    step_after("install")
    r = run(fresh_host, "systemd-analyze", "security", "--no-pager", unit, ok=False)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    assert m, r.stdout[-800:] + r.stderr
    assert float(m.group(1)) <= _goal(fresh_host, unit), m.group(0)


def test_scorecard_checks_secrets_audit_size_and_the_rotate_timer(fresh_host):
    step_after("smoke")
    host = fresh_host
    run(host, "systemctl", "start", "vx11-rotate.service")  # a first successful rotation

    def card() -> dict[str, dict]:
        r = run(host, "vx11ctl", "scorecard", "--json", ok=False)
        return {c["name"]: c for c in json.loads(r.stdout)["checks"]}

    checks = card()
    for name in ("secrets_not_in_audit_roots", "secrets_not_world_readable",
                 "audit_size_budget", "rotate_timer_enabled", "rotation_recent"):
        assert checks[name]["ok"], checks[name]
    assert "/var/lib/vx11/audit" in checks["audit_size_budget"]["detail"]
    token = run(host, "cat", "/etc/vx11/token").stdout.strip()
    leak = "/var/lib/vx11/audit/20260101T000000Z_run/curl.log"
    run(host, "sh", "-c", f"mkdir -p {leak.rsplit('/', 1)[0]} && "
        f"echo 'curl -H \"X-VX11-Token: {token}\"' > {leak} && "
        "cp /etc/vx11/token /etc/vx11/token.bak && chmod 644 /etc/vx11/token.bak")
    try:
        checks = card()
        assert not checks["secrets_not_in_audit_roots"]["ok"]
        assert f"API token in {leak}" in checks["secrets_not_in_audit_roots"]["detail"]
        assert "API token in /etc/vx11/token.bak (mode 644)" in \
            checks["secrets_not_world_readable"]["detail"]
        assert token not in json.dumps(checks)
    finally:
        run(host, "rm", "-rf", leak.rsplit("/", 1)[0], "/etc/vx11/token.bak")


def test_invalid_config_reload_refused_restart_exits_78_once(fresh_host):
    step_after("smoke")
    host = fresh_host
    pids = {u: show(host, u, "MainPID")["MainPID"] for u in DAEMONS}
    assert all(p != "0" for p in pids.values()), pids
    run(host, "cp", "-p", "/etc/vx11/vx11.yml", "/root/vx11.yml.good")
    run(host, "sh", "-c", "echo 'log_level: loud' >> /etc/vx11/vx11.yml")
    try:
        since = run(host, "date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
        run(host, "systemctl", "reload", *DAEMONS)

        def refused() -> set[str]:
            return {e.get("_SYSTEMD_UNIT") for e in journal(
                host, "--since", since, "VX11_EVENT=config_reload_refused")}
        poll_for(lambda: refused() >= set(DAEMONS), 30, what="every daemon refusing")
        # the running set keeps its config: same processes, all active
        for u in DAEMONS:
            p = show(host, u, "MainPID", "ActiveState")
            assert p == {"MainPID": pids[u], "ActiveState": "active"}, (u, p)
        r = run(host, "systemctl", "restart", "vx11-madre.service", ok=False)
        assert r.returncode != 0
        p = show(host, "vx11-madre.service", "ActiveState", "Result", "ExecMainStatus",
                 "NRestarts", "InvocationID")
        assert (p["ActiveState"], p["ExecMainStatus"], p["NRestarts"]) == \
            ("failed", "78", "0"), p
        lines = [e["MESSAGE"] for e in journal(host, f"_SYSTEMD_INVOCATION_ID="
                                                     f"{p['InvocationID']}")
                 if e.get("SYSLOG_IDENTIFIER") == "vx11-madre"]
        assert len(lines) == 1, lines
        assert "/etc/vx11/vx11.yml" in lines[0] and "log_level" in lines[0], lines[0]
        for u in DAEMONS[1:]:  # the rest of the set is untouched
            assert show(host, u, "MainPID")["MainPID"] == pids[u]
    finally:
        run(host, "cp", "-p", "/root/vx11.yml.good", "/etc/vx11/vx11.yml")
        run(host, "systemctl", "reset-failed", "vx11-madre.service", ok=False)
        run(host, "systemctl", "restart", "vx11-madre.service")
    assert show(host, "vx11-madre.service", "ActiveState")["ActiveState"] == "active"


def test_token_with_wrong_mode_is_refused_with_a_clear_message(fresh_host, debs):
    step_after("smoke")
    host = fresh_host
    before = token_sha(host)
    run(host, "chmod", "644", "/etc/vx11/token")
    try:
        r = run(host, "apt-get", "install", "-y", "--reinstall",
                f"/root/{debs['current'].name}")
        said = r.stdout + r.stderr  # apt passes the maintainer scripts' output on
        assert "/etc/vx11/token is mode 644" in said and "chmod 600 /etc/vx11/token" in said
        assert token_sha(host) == before  # warned about, never replaced
        run(host, "systemctl", "restart", "vx11-gateway.service", ok=False)
        p = show(host, "vx11-gateway.service", "ActiveState", "ExecMainStatus", "InvocationID")
        assert (p["ActiveState"], p["ExecMainStatus"]) == ("failed", "78"), p
        msgs = [e["MESSAGE"] for e in journal(host, f"_SYSTEMD_INVOCATION_ID={p['InvocationID']}")
                if e.get("SYSLOG_IDENTIFIER") == "vx11-gateway"]
        assert len(msgs) == 1 and "chmod 600 /etc/vx11/token" in msgs[0], msgs
        assert before not in "".join(msgs)
    finally:
        run(host, "chmod", "600", "/etc/vx11/token")
        run(host, "systemctl", "reset-failed", "vx11-gateway.service", ok=False)
    run(host, "systemctl", "start", "vx11-gateway.service")
    assert run(host, "vx11ctl", "hijas", "list").returncode == 0
    _steps.append("token")


def test_reboot_brings_the_set_back_with_history_intact(fresh_host):
    step_after("smoke")
    host = fresh_host
    r = run(host, "vx11ctl", "hijas", "spawn", "sleeper", "--ttl", "20m", "--json")
    hid = json.loads(r.stdout)["id"]
    hijas_before = sql(host, "SELECT id, status FROM spawner_hijas ORDER BY id")
    events_before = sql(host, "SELECT count(*) FROM events")[0][0]
    assert [hid, "running"] in hijas_before
    host.poweroff()
    t0 = time.monotonic()
    host.boot()
    poll_for(lambda: run(host, "systemctl", "is-active", "vx11.target", "vx11-madre.service",
                         "vx11-reaper.service", "vx11-gateway.socket", ok=False
                         ).stdout.split() == ["active"] * 4, 60, what="the set back by itself")
    assert time.monotonic() - t0 < 120
    run(host, "vx11ctl", "db", "check")
    # the hija that ran at power-off: ended, with the reason, nothing else rewritten
    row = poll_for(lambda: sql(host, f"SELECT status, ended_at, started_at FROM spawner_hijas "
                                     f"WHERE id = '{hid}' AND status != 'running'"),
                   60, what="the hija recorded as ended")
    status, ended_at, started_at = row[0]
    assert status == "stopped", row
    assert started_at <= ended_at <= time.time() - (time.monotonic() - t0) + 1, row
    after = dict((i, s) for i, s in sql(host, "SELECT id, status FROM spawner_hijas"))
    for i, s in hijas_before:
        assert i in after, f"hija {i} lost from the registry"
        if i != hid:
            assert after[i] == s, (i, s, after[i])
    assert sql(host, "SELECT count(*) FROM events")[0][0] > events_before
    t = show(host, "vx11-rotate.timer", "ActiveState", "NextElapseUSecRealtime")
    assert t["ActiveState"] == "active" and t["NextElapseUSecRealtime"], t
    _steps.append("reboot")


def test_apt_remove_stops_everything_and_keeps_config_and_state(fresh_host):
    step_after("install")
    host = fresh_host
    run(host, "vx11ctl", "hijas", "spawn", "sleeper", "--ttl", "20m")
    run(host, "apt-get", "remove", "-y", "vx11d")
    assert "deinstall ok config-files" in run(host, "dpkg", "-s", "vx11d", ok=False).stdout
    assert vx11_processes(host) == []
    units = run(host, "systemctl", "list-units", "--all", "--plain", "--no-legend",
                "vx11*").stdout
    assert not [ln for ln in units.splitlines() if " active " in f" {ln} "], units
    for unit in ENABLED:
        assert run(host, "systemctl", "is-enabled", unit, ok=False).stdout.strip() \
            != "enabled", unit
    for path in ("/etc/vx11/vx11.yml", "/etc/vx11/token", "/var/lib/vx11/vx11.db"):
        run(host, "test", "-f", path)
    _steps.append("remove")


def test_apt_purge_removes_config_state_and_systemd_traces(fresh_host):
    step_after("remove")
    host = fresh_host
    run(host, "apt-get", "purge", "-y", "vx11d")
    assert run(host, "dpkg", "-s", "vx11d", ok=False).returncode != 0
    for path in ("/etc/vx11", "/var/lib/vx11", "/opt/vx11d", "/run/vx11"):
        assert run(host, "test", "-e", path, ok=False).returncode != 0, path
    leftovers = run(host, "find", "/etc/systemd", "/run/systemd/system", "/lib/systemd/system",
                    "/var/lib/systemd/deb-systemd-helper-enabled", "-name", "*vx11*").stdout
    assert leftovers.strip() == "", leftovers
    for args in (["list-units", "--all"], ["list-unit-files"]):
        out = run(host, "systemctl", *args, "--plain", "--no-legend", "vx11*", ok=False).stdout
        assert out.strip() == "", out
    # system users stay (their UIDs may own files elsewhere); see docs/install.md
    assert run(host, "getent", "passwd", "vx11").returncode == 0
