"""`make apt` (.ci/apt-install) on a host booted with systemd: a package installed for its
programs only (nginx, prometheus, node_exporter... as the Makefile's PROGRAMS_ONLY) gets
its service neither started nor enabled, where Debian would do both (nginx on :80,
prometheus on :9090, on every address); any other package is installed as Debian does
it; the policy-rc.d used meanwhile is gone, and an admin's own is left alone.

The host has no network: its apt source is a local repository of two small packages
whose maintainer scripts enable and start their service as debhelper's do."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from .conftest import run

pytestmark = [pytest.mark.host, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]

POSTINST = """\
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    deb-systemd-helper unmask {unit} >/dev/null || true
    if deb-systemd-helper --quiet was-enabled {unit}; then
        deb-systemd-helper enable {unit} >/dev/null || true
    else
        deb-systemd-helper update-state {unit} >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        deb-systemd-invoke start {unit} >/dev/null || true
    fi
fi
"""


def _deb(out: Path, name: str) -> None:
    root = out / name
    (root / "DEBIAN").mkdir(parents=True)
    unit_dir = root / "lib/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / f"{name}.service").write_text(textwrap.dedent(f"""\
        [Unit]
        Description={name}
        [Service]
        ExecStart=/bin/sleep infinity
        [Install]
        WantedBy=multi-user.target
        """))
    (root / "DEBIAN/control").write_text(textwrap.dedent(f"""\
        Package: {name}
        Version: 1.0
        Architecture: all
        Maintainer: vx11d tests <tests@vx11d.invalid>
        Description: a service that Debian's scripts start and enable
        """))
    post = root / "DEBIAN/postinst"
    post.write_text(POSTINST.format(unit=f"{name}.service"))
    post.chmod(0o755)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root),
                    str(out / f"{name}_1.0_all.deb")], check=True, capture_output=True)


@pytest.fixture(scope="module")
def host(fresh_host, tmp_path_factory):
    repo = tmp_path_factory.mktemp("apt-repo")
    for name in ("vx11-tool-svc", "vx11-other-svc"):
        _deb(repo, name)
    packages = subprocess.run(["dpkg-scanpackages", "-m", "."], cwd=repo, check=True,
                              capture_output=True, text=True).stdout
    (repo / "Packages").write_text(packages)
    for f in repo.iterdir():
        if f.is_file():
            fresh_host.put(f, f"/srv/repo/{f.name}")
    fresh_host.put(REPO / ".ci/apt-install", "/root/apt-install", mode=0o755)
    run(fresh_host, "sh", "-c", "rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*; "
        "echo 'deb [trusted=yes] file:/srv/repo ./' > /etc/apt/sources.list.d/local.list")
    return fresh_host


def state(host, unit: str) -> tuple[str, str]:
    enabled = run(host, "systemctl", "is-enabled", unit, ok=False).stdout.strip()
    active = run(host, "systemctl", "is-active", unit, ok=False).stdout.strip()
    return enabled, active


def test_a_program_only_package_gets_no_running_or_enabled_service(host):
    r = run(host, "/root/apt-install", "--programs-only", "nginx vx11-tool-svc",
            "vx11-tool-svc", "vx11-other-svc", timeout=600)
    assert "installing: vx11-tool-svc vx11-other-svc" in r.stdout, r.stdout
    assert "installed for its programs only, services not started or enabled: " \
           "vx11-tool-svc" in r.stdout, r.stdout
    assert state(host, "vx11-tool-svc.service") == ("disabled", "inactive")
    # the same scripts, not named: installed as Debian does it (the test can fail)
    assert state(host, "vx11-other-svc.service") == ("enabled", "active")
    assert run(host, "test", "-e", "/usr/sbin/policy-rc.d", ok=False).returncode == 1
    again = run(host, "/root/apt-install", "--programs-only", "vx11-tool-svc",
                "vx11-tool-svc", "vx11-other-svc")
    assert again.stdout == "" and state(host, "vx11-tool-svc.service")[0] == "disabled"


def test_an_admins_policy_rc_d_is_kept(host, tmp_path):
    admin = "#!/bin/sh\n# the admin's own\nexit 0\n"
    (tmp_path / "policy-rc.d").write_text(admin)
    host.put(tmp_path / "policy-rc.d", "/usr/sbin/policy-rc.d", mode=0o755)
    run(host, "apt-get", "remove", "-y", "-q", "vx11-tool-svc")
    run(host, "/root/apt-install", "--programs-only", "vx11-tool-svc", "vx11-tool-svc")
    assert run(host, "cat", "/usr/sbin/policy-rc.d").stdout == admin
    assert state(host, "vx11-tool-svc.service") == ("disabled", "inactive")
