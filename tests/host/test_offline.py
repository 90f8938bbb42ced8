"""Bad input for the package: installed while no systemd runs (an image being built, a
chroot), and an upgrade or reinstall over a conffile the admin broke."""

from __future__ import annotations

import os

import pytest

from tests.infra import freshhost
from tests.support import poll_for

from .conftest import run, show

pytestmark = [pytest.mark.host, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def unbooted_host(host_image, debs):
    host = freshhost.FreshHost(host_image, f"vx11h-{os.getpid()}-offline").create()
    for deb in debs.values():
        host.put(deb, f"/root/{deb.name}")
    try:
        yield host
    finally:
        if os.environ.get("VX11_KEEP_HOST") != "1":
            host.destroy()


def test_install_without_systemd_running_then_boot(unbooted_host, debs):
    host = unbooted_host
    r = host.offline(["apt-get", "install", "-y", "--no-install-recommends",
                      f"/root/{debs['current'].name}"])
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert not (host.root / "run/systemd/system").exists()
    token = (host.root / "etc/vx11/token")
    assert oct(token.stat().st_mode & 0o777) == "0o600" and token.stat().st_uid == 0
    assert (host.root / "etc/systemd/system/multi-user.target.wants/vx11.target").is_symlink()
    host.boot()  # the first boot brings the set up by itself
    poll_for(lambda: run(host, "systemctl", "is-active", "vx11.target", "vx11-madre.service",
                         "vx11-reaper.service", "vx11-gateway.socket", ok=False
                         ).stdout.split() == ["active"] * 4, 60, what="the set active")
    run(host, "vx11ctl", "db", "check")


def test_reinstall_over_a_broken_conffile_says_so_and_restarts_nothing(unbooted_host, debs):
    host = unbooted_host
    assert host.is_up(), "needs the previous step's booted host"
    pid = show(host, "vx11-madre.service", "MainPID")["MainPID"]
    run(host, "cp", "-p", "/etc/vx11/vx11.yml", "/root/vx11.yml.good")
    run(host, "sh", "-c", "printf 'madre:\\n  tick: soon\\n' >> /etc/vx11/vx11.yml")
    r = run(host, "apt-get", "install", "-y", "--reinstall", f"/root/{debs['current'].name}")
    said = r.stdout + r.stderr
    assert "/etc/vx11/vx11.yml" in said and "madre.tick" in said, said[-2000:]
    assert "systemctl restart vx11.target" in said  # what to do next
    p = show(host, "vx11-madre.service", "MainPID", "ActiveState")
    assert p == {"MainPID": pid, "ActiveState": "active"}, p  # not restarted into a failure
    run(host, "cp", "-p", "/root/vx11.yml.good", "/etc/vx11/vx11.yml")
    run(host, "vx11ctl", "config", "check")
