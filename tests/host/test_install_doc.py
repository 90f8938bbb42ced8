"""docs/install.md followed literally on a fresh Debian 12 host, and the backup and restore
commands of docs/faults.md: every command comes from the page's marked code blocks
(tests/docblocks.py), none is retyped here. What the test adds is only what a sysadmin
does between the blocks (a reboot, looking at the result) and what it checks.

Also the package's file list: what the docs tell people to install is in it.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from tests import docblocks
from tests.support import poll_for

from .conftest import journal, run, vx11_processes

# the first test of a session may build both packages and the image (minutes)
pytestmark = [pytest.mark.host, pytest.mark.timeout(1800)]

REPO = docblocks.DOCS.parent
SET = ["vx11.target", "vx11-madre.service", "vx11-reaper.service", "vx11-gateway.socket"]
_steps: list[str] = []


def step_after(*needed: str) -> None:
    """Fail (not skip) a step whose precondition step did not pass."""
    missing = [n for n in needed if n not in _steps]
    assert not missing, f"earlier step(s) failed: {', '.join(missing)}"


def typed(host, doc: str, name: str, *, cwd: str = "/root", timeout: float = 300):
    """Each command of the marked block, as typed at a root shell in ``cwd``; returns
    [(command, result)]."""
    done = []
    for cmd in docblocks.commands(docblocks.block(doc, name)):
        r = host.exec(["sh", "-c", f"cd {cwd} && {cmd}"], timeout=timeout)
        done.append((cmd, r))
    return done


def all_ok(done) -> None:
    bad = [f"$ {cmd}\n-> exit {r.returncode}\n{r.stdout[-1500:]}{r.stderr[-1500:]}"
           for cmd, r in done if r.returncode != 0]
    assert not bad, "\n\n".join(bad)


def set_active(host) -> bool:
    return run(host, "systemctl", "is-active", *SET, ok=False).stdout.split() \
        == ["active"] * len(SET)


def admin_token_answers(host, secret: str) -> int:
    """The HTTP status of an authenticated GET with ``secret``, from inside the host."""
    code = ("import sys, urllib.error, urllib.request\n"
            "r = urllib.request.Request('http://127.0.0.1:8000/vx11/hijas',"
            " headers={'X-VX11-Token': sys.argv[1]})\n"
            "try:\n    print(urllib.request.urlopen(r, timeout=10).status)\n"
            "except urllib.error.HTTPError as e:\n    print(e.code)\n")
    return int(run(host, "/opt/vx11d/bin/python3", "-c", code, secret).stdout.strip())


# --- the package itself ----------------------------------------------------------------

def _deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True,
                          check=True).stdout


def test_package_ships_the_journal_fleet_and_grafana_files(debs):
    deb = str(debs["current"])
    files = {ln.split()[-1].removeprefix(".") for ln in _deb("-c", deb).splitlines()}
    for d in ("journal", "fleet"):
        for src in sorted((REPO / "packaging" / d).iterdir()):
            assert f"/usr/share/vx11d/{d}/{src.name}" in files, (d, src.name)
    provisioning = "/etc/grafana/provisioning/dashboards/vx11d.yaml"
    assert provisioning in files
    conffiles = subprocess.run(["sh", "-c", f"dpkg-deb --ctrl-tarfile '{deb}' | "
                                "tar -xO ./conffiles"], capture_output=True, text=True,
                               check=True).stdout.split()
    assert conffiles == ["/etc/vx11/vx11.yml", provisioning], conffiles
    assert _deb("-f", deb, "Suggests").strip() == "grafana"
    # the provisioning file points at a directory of the package holding the dashboard
    prov = yaml.safe_load((REPO / "packaging" / "grafana" / "provisioning" / "vx11d.yaml")
                          .read_text())
    path = prov["providers"][0]["options"]["path"]
    assert f"{path}/vx11.json" in files, path


def test_install_doc_states_the_installed_size(debs):
    text = (REPO / "docs" / "install.md").read_text()
    m = re.search(r"Installed size: ([\d.]+) MiB for the Debian 12 package", text)
    assert m, "docs/install.md states no installed size"
    kib = int(_deb("-f", str(debs["current"]), "Installed-Size"))
    assert abs(float(m.group(1)) - kib / 1024) <= 0.5, (m.group(0), kib)


# --- the page, in order, on one host ---------------------------------------------------

def test_install_as_documented(fresh_host):
    host = fresh_host
    # answers apt's question the way a sysadmin would (yes); nothing else is set up
    run(host, "sh", "-c", "echo 'APT::Get::Assume-Yes \"true\";' "
        "> /etc/apt/apt.conf.d/90assume-yes")
    all_ok(typed(host, "install", "install"))
    assert "install ok installed" in run(host, "dpkg", "-s", "vx11d").stdout
    poll_for(lambda: set_active(host), 60, what="the set active")
    _steps.append("install")


def test_sample_config_appended_as_documented_is_accepted(fresh_host):
    step_after("install")
    all_ok(typed(fresh_host, "install", "config"))
    r = run(fresh_host, "vx11ctl", "config", "check", ok=False)
    assert r.returncode == 0, r.stdout + r.stderr
    _steps.append("config")


def test_the_first_five_commands_exit_0(fresh_host):
    step_after("config")
    done = typed(fresh_host, "install", "first-five")
    assert len(done) == 5, [c for c, _ in done]
    all_ok(done)
    smoke = done[2][1].stdout
    assert smoke.strip().endswith("smoke passed"), smoke
    card = done[4][1].stdout
    assert re.search(r"^ok +rotation_recent: not yet due", card, re.M), card
    assert not re.search(r":\s*$", card, re.M), card  # no dangling colon
    assert "FAIL" not in card, card
    # the one reload reached the gateway too (PropagatesReloadTo=): the smoke's spawn
    # through the API found the new template
    reloaded = {e.get("_SYSTEMD_UNIT") for e in journal(fresh_host,
                                                         "VX11_EVENT=config_reloaded")}
    assert {"vx11-madre.service", "vx11-gateway.service"} <= reloaded, reloaded
    _steps.append("first-five")


def test_a_spawn_without_ttl_gets_the_templates_default_ttl(fresh_host):
    step_after("config")
    m = re.search(r"`(vx11ctl hijas spawn sleeper)`", (REPO / "docs" / "install.md")
                  .read_text())
    assert m, "docs/install.md shows no spawn without a TTL"
    r = run(fresh_host, "sh", "-c", m.group(1) + " --json")
    assert json.loads(r.stdout)["ttl_s"] == 30, r.stdout  # the page's default_ttl: 30s


def test_gateway_status_line_is_the_one_gateway_md_shows(fresh_host):
    """Regression: docs/gateway.md showed a status line with ('::', 8000, 0, 0) in it."""
    step_after("first-five")
    text = " ".join((REPO / "docs" / "gateway.md").read_text().split())
    m = re.search(r'`systemctl status vx11-gateway`: `Status: "([^"]+)"`', text)
    assert m, "docs/gateway.md shows no gateway status line"
    seen = run(fresh_host, "systemctl", "show", "-p", "StatusText", "--value",
               "vx11-gateway.service").stdout.strip()
    assert seen == m.group(1), (seen, m.group(1))


def test_reboot_brings_the_set_back(fresh_host):
    step_after("first-five")
    host = fresh_host
    host.poweroff()
    host.boot()
    poll_for(lambda: set_active(host), 90, what="the set back by itself after the reboot")
    run(host, "vx11ctl", "status")
    _steps.append("reboot")


def test_token_rotation_as_documented(fresh_host):
    step_after("reboot")
    host = fresh_host
    old = run(host, "cat", "/etc/vx11/token").stdout.strip()
    assert admin_token_answers(host, old) == 200
    all_ok(typed(host, "install", "token-rotate"))
    new = run(host, "cat", "/etc/vx11/token").stdout.strip()
    assert new != old and len(new) >= 32
    assert run(host, "stat", "-c", "%a %U", "/etc/vx11/token").stdout.split() == \
        ["600", "root"]
    assert admin_token_answers(host, new) == 200
    assert admin_token_answers(host, old) == 401
    _steps.append("token")


def test_backup_and_restore_as_documented(fresh_host):
    step_after("reboot")
    host = fresh_host
    done = typed(host, "faults", "backup-restore")
    all_ok(done)
    restore = done[-1][1].stdout
    assert restore.startswith("restored /var/lib/vx11/vx11.db from "
                              "/var/lib/vx11/backups/vx11-"), restore
    assert restore.strip().endswith("db check: ok"), restore
    poll_for(lambda: set_active(host), 60, what="the set started again after the restore")
    all_ok(typed(host, "faults", "backup-timer"))
    assert run(host, "systemctl", "is-enabled", "vx11-backup.timer").stdout.strip() \
        == "enabled"
    _steps.append("restore")


def test_remove_as_documented_keeps_config_and_state(fresh_host):
    step_after("install")
    host = fresh_host
    all_ok(typed(host, "install", "remove"))
    assert "deinstall ok config-files" in run(host, "dpkg", "-s", "vx11d", ok=False).stdout
    assert vx11_processes(host) == []
    for path in ("/etc/vx11/vx11.yml", "/etc/vx11/token", "/var/lib/vx11/vx11.db"):
        run(host, "test", "-f", path)
    _steps.append("remove")


def test_purge_leaves_exactly_what_the_doc_lists(fresh_host):
    step_after("remove")
    host = fresh_host
    all_ok(typed(host, "install", "purge"))
    assert run(host, "dpkg", "-s", "vx11d", ok=False).returncode != 0
    listing = "\n".join(docblocks.commands(docblocks.block("install",
                                                           "purge-leftovers-command")))
    left = run(host, "sh", "-c", listing, ok=False).stdout
    documented = docblocks.lines(docblocks.block("install", "purge-leftovers"))
    assert sorted(docblocks.lines(left)) == sorted(documented), left
