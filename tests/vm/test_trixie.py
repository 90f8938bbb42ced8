"""Debian 13 (trixie) on its own kernel (6.12, systemd 257), pure cgroup v2: the
package's whole life on one host, in order, with every real-kernel check
(tests/vm/checks.py) run while it is installed. A step fails at once if an earlier one
left the host broken."""

from __future__ import annotations

import json

import pytest

from tests.support import poll_for

from .conftest import (
    DAEMONS,
    documented_purge_leftovers,
    install,
    purge_leftovers_command,
    run,
    show,
    sql,
)

RELEASE = "trixie"
# the upgrade step installs the tree's package again as the next version
NEXT_VERSION = True
# Debian 12's package, forced in first: refused
FOREIGN_RELEASE = "bookworm"
pytestmark = [pytest.mark.vm, pytest.mark.timeout(2400)]


def test_a_package_for_another_release_fails_to_configure_in_one_line(guest):
    """Regression: the bookworm package forced onto trixie printed a traceback, blamed
    the config, and dpkg said it was configured."""
    r = run(guest, "dpkg", "--force-depends", "-i", f"/root/{guest.foreign_deb.name}", ok=False,
            timeout=900)
    said = r.stdout + r.stderr
    assert r.returncode != 0, said[-2000:]
    assert "Traceback" not in said and "is invalid" not in said, said[-2000:]
    ours = [ln for ln in said.splitlines() if ln.startswith("vx11d:")]
    assert ours == ["vx11d: this package was built for Python 3.11 and this system has "
                    "python3 3.13: install the vx11d package built for this Debian "
                    "release"], said[-2000:]
    assert "half-configured" in run(guest, "dpkg", "-s", "vx11d", ok=False).stdout
    run(guest, "dpkg", "--purge", "vx11d", timeout=600)
    assert run(guest, "test", "-e", "/opt/vx11d", ok=False).returncode != 0


def test_apt_install_then_smoke_passes(guest):
    install(guest, guest.deb)
    status = run(guest, "dpkg", "-s", "vx11d").stdout
    assert "install ok installed" in status and "~deb13u" in status, status
    poll_for(lambda: run(guest, "systemctl", "is-active", "vx11.target", *DAEMONS[:2],
                         "vx11-gateway.socket", ok=False).stdout.split() == ["active"] * 4,
             60, interval=1, what="the set active after install")
    assert run(guest, "vx11ctl", "db", "check").stdout.strip().endswith(": ok")
    guest.installed = True


def test_smoke_on_the_admins_config(vx11_guest):
    r = run(vx11_guest, "vx11ctl", "smoke", timeout=300)
    assert r.stdout.strip().endswith("smoke passed"), r.stdout


from .checks import *  # noqa: E402, F403 (the real-kernel checks, while installed)


def test_reboot_brings_the_set_back_with_history_intact(vx11_guest):
    host = vx11_guest
    count = "SELECT (SELECT count(*) FROM spawner_hijas), (SELECT count(*) FROM events)"
    rows = sql(host, count)
    host.reboot()
    poll_for(lambda: run(host, "systemctl", "is-active", "vx11.target", *DAEMONS[:2],
                         "vx11-gateway.socket", ok=False).stdout.split() == ["active"] * 4,
             120, interval=1, what="the set active after the reboot")
    after = sql(host, count)
    assert after[0][0] == rows[0][0] and after[0][1] >= rows[0][1], (rows, after)
    assert len(run(host, "journalctl", "--list-boots", "--no-pager").stdout.splitlines()) >= 2
    run(host, "vx11ctl", "db", "check")


def test_upgrade_with_a_hija_running_keeps_it_and_restarts_the_set(vx11_guest):
    host = vx11_guest
    hija = json.loads(run(host, "vx11ctl", "hijas", "spawn", "sleeper", "--ttl", "5m",
                          "--json").stdout)
    assert hija["status"] == "running", hija
    pids = {u: show(host, u, "MainPID")["MainPID"] for u in DAEMONS[:2]}
    r = run(host, "sh", "-c", "cd /root && apt-get install -y --no-install-recommends "
            f"-o Dpkg::Options::=--force-confold ./{host.next_deb}", timeout=900)
    assert "Traceback" not in r.stdout + r.stderr
    assert f"Version: {host.next_version}" in run(host, "dpkg", "-s", "vx11d").stdout
    for u in DAEMONS[:2]:
        p = show(host, u, "MainPID", "ActiveState")
        assert p["ActiveState"] == "active" and p["MainPID"] != pids[u], (u, p)
    unit = f"vx11-hija-{hija['id']}.service"
    assert run(host, "systemctl", "is-active", unit, ok=False).stdout.strip() == "active"
    rows = json.loads(run(host, "vx11ctl", "hijas", "list", "--status", "running",
                          "--json").stdout)
    assert hija["id"] in [r["id"] for r in rows], rows
    run(host, "vx11ctl", "db", "check")


def test_apt_remove_stops_everything_and_keeps_config_and_state(vx11_guest):
    host = vx11_guest
    host.history = sorted(h["id"] for h in json.loads(run(
        host, "vx11ctl", "hijas", "list", "--limit", "500", "--json").stdout))
    run(host, "apt-get", "remove", "-y", "vx11d", timeout=600)
    out = run(host, "systemctl", "list-units", "--plain", "--no-legend", "--state=active",
              "vx11*", ok=False).stdout
    assert out.strip() == "", out
    for path in ("/etc/vx11/vx11.yml", "/etc/vx11/token", "/var/lib/vx11/vx11.db"):
        assert run(host, "test", "-e", path, ok=False).returncode == 0, path
    assert run(host, "test", "-e", "/opt/vx11d/bin/vx11d", ok=False).returncode != 0


def test_install_after_remove_keeps_config_token_and_history(vx11_guest):
    """What a Debian 12 to 13 upgrade does to vx11d (docs/install.md): apt removes the
    package, the new one is installed over what the removal kept."""
    host = vx11_guest
    token = run(host, "sha256sum", "/etc/vx11/token").stdout
    config = run(host, "sha256sum", "/etc/vx11/vx11.yml").stdout
    run(host, "sh", "-c", "cd /root && apt-get install -y --no-install-recommends "
        f"./{host.next_deb}", timeout=900)
    assert run(host, "sha256sum", "/etc/vx11/token").stdout == token
    assert run(host, "sha256sum", "/etc/vx11/vx11.yml").stdout == config
    history = json.loads(run(host, "vx11ctl", "hijas", "list", "--limit", "500",
                             "--json").stdout)
    assert sorted(h["id"] for h in history) == host.history
    assert {"oom", "expired", "exited"} <= {h["status"] for h in history}, history
    poll_for(lambda: run(host, "systemctl", "is-active", "vx11.target", *DAEMONS[:2],
                         ok=False).stdout.split() == ["active"] * 3, 120, interval=1,
             what="the set started again")
    run(host, "vx11ctl", "db", "check")


def test_apt_purge_leaves_exactly_what_the_docs_list(vx11_guest):
    host = vx11_guest
    run(host, "apt-get", "purge", "-y", "vx11d", timeout=600)
    left = run(host, "sh", "-c", purge_leftovers_command(), ok=False).stdout.splitlines()
    assert sorted(left) == documented_purge_leftovers(), left
    for args in (["list-units", "--all"], ["list-unit-files"]):
        out = run(host, "systemctl", *args, "--plain", "--no-legend", "vx11*", ok=False).stdout
        assert out.strip() == "", out
