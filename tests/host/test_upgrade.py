"""Upgrade from the previous release (tests/host/conftest.py PREVIOUS_COMMIT) to the tree,
with a hija running and an admin's edit in the conffile, as `apt-get install` does it.

What makes it meaningful: the old package's own maintainer scripts run (its prerm on
upgrade, then the new postinst), the old daemons are running the old code, the hija
outlives the daemons' restart, and every migration the new code adds must be applied
exactly once while the old ones are left alone.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.support import poll_for
from vx11d import db as vx11db

from .conftest import PREVIOUS_VERSION, run, show, sql

pytestmark = [pytest.mark.host, pytest.mark.timeout(1800)]

ADMIN_EDIT = [
    "-e", r"s|^  templates: {}|  templates:\n    sleeper:\n      command: [/usr/bin/sleep, "
          r"infinity]\n      default_ttl: 30s\n      max_ttl: 30m|",
    "-e", r"s|^log_level: info|# edited by the admin before the upgrade\nlog_level: info|",
]
DAEMONS = ["vx11-madre.service", "vx11-reaper.service"]


def test_upgrade_with_a_running_hija_keeps_everything(fresh_host, debs):
    host = fresh_host
    run(host, "apt-get", "install", "-y", "--no-install-recommends",
        f"/root/{debs['previous'].name}")
    assert f"Version: {PREVIOUS_VERSION}" in run(host, "dpkg", "-s", "vx11d").stdout
    run(host, "sed", "-i", *ADMIN_EDIT, "/etc/vx11/vx11.yml")
    run(host, "systemctl", "enable", "--now", "vx11.target")
    token = run(host, "sha256sum", "/etc/vx11/token").stdout
    hija = json.loads(run(host, "vx11ctl", "hijas", "spawn", "sleeper", "--ttl", "75s",
                          "--json").stdout)
    assert hija["status"] == "running", hija
    run(host, "vx11ctl", "hijas", "spawn", "sleeper", "--ttl", "1s")  # some history
    poll_for(lambda: sql(host, "SELECT count(*) FROM spawner_hijas WHERE status = 'expired'"
                         )[0][0] == 1, 30, what="the short hija expired")
    migrations_before = sql(host, "SELECT name, applied_at FROM schema_migrations")
    hijas_before = sql(host, "SELECT id, status, expires_at FROM spawner_hijas")
    events_before = sql(host, "SELECT id FROM events")
    pids = {u: show(host, u, "MainPID")["MainPID"] for u in DAEMONS}

    t_upgrade = time.time()
    r = run(host, "apt-get", "install", "-y", "--no-install-recommends",
            "-o", "Dpkg::Options::=--force-confdef", "-o", "Dpkg::Options::=--force-confold",
            f"/root/{debs['current'].name}")
    said = r.stdout + r.stderr
    status = run(host, "dpkg", "-s", "vx11d").stdout
    assert "install ok installed" in status and f"Version: {PREVIOUS_VERSION}" not in status
    if "is invalid" in said:
        # Known incompatibility: 0.1.0's conffile spells every default, and the admin's
        # edit keeps it, with db.busy_timeout_ms: 5000 and db.write_deadline: 30, which the
        # new release refuses (the watchdog fit check). The postinst must say what and
        # where, restart nothing into a failure, and leave the hija alone; the admin then
        # drops the two keys (back to the new defaults).
        assert "/etc/vx11/vx11.yml: db.write_deadline" in said, said[-2000:]
        assert "madre stays stopped until then" in said
        unit = f"vx11-hija-{hija['id']}.service"
        assert run(host, "systemctl", "is-active", unit, ok=False).stdout.strip() == "active"
        run(host, "sed", "-i", "-e", "/^  write_deadline: 30$/d", "-e",
            "/^  busy_timeout_ms: 5000$/d", "/etc/vx11/vx11.yml")
        run(host, "vx11ctl", "config", "check")
        run(host, "systemctl", "restart", "vx11.target")

    # the maintainer scripts restarted the daemons onto the new code
    for u in DAEMONS:
        p = show(host, u, "MainPID", "ActiveState")
        assert p["ActiveState"] == "active" and p["MainPID"] != pids[u], (u, p)
    # the admin's edit survived (conffile), the token was not touched
    conf = run(host, "cat", "/etc/vx11/vx11.yml").stdout
    assert "# edited by the admin before the upgrade" in conf and "sleeper:" in conf
    assert run(host, "sha256sum", "/etc/vx11/token").stdout == token
    # migrations: the old ones untouched, the new ones applied once, at the upgrade
    after = dict(sql(host, "SELECT name, applied_at FROM schema_migrations"))
    for name, applied in migrations_before:
        assert after.pop(name) == applied, name
    new_names = [n for n, _ in vx11db.MIGRATIONS if n not in dict(migrations_before)]
    assert sorted(after) == sorted(new_names), (after, new_names)
    assert all(a >= t_upgrade for a in after.values()), after
    # no record lost
    ids_after = {r[0] for r in sql(host, "SELECT id FROM spawner_hijas")}
    assert {h[0] for h in hijas_before} <= ids_after
    ev_after = {r[0] for r in sql(host, "SELECT id FROM events")}
    assert {e[0] for e in events_before} <= ev_after
    run(host, "vx11ctl", "db", "check")
    # the running hija: still tracked, still running, and it expires on time
    unit = f"vx11-hija-{hija['id']}.service"
    assert run(host, "systemctl", "is-active", unit, ok=False).stdout.strip() == "active"
    assert sql(host, f"SELECT status FROM spawner_hijas WHERE id = '{hija['id']}'") \
        == [["running"]]
    row = poll_for(lambda: sql(host, "SELECT status, ended_at, expires_at FROM spawner_hijas "
                                     f"WHERE id = '{hija['id']}' AND status != 'running'"),
                   120, interval=0.5, what="the hija to end")
    status_, ended, expires = row[0]
    assert status_ == "expired" and abs(ended - expires) < 2.0, row[0]
