"""The .deb recipe builds a package whose virtualenv runs from /opt/vx11d."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deb() -> Path:
    """The tree's package, built once and shared with the host tier (cached by content)."""
    from tests.host.packages import build_current

    return build_current()


def test_package_metadata_and_contents(deb):
    info = subprocess.run(["dpkg-deb", "-I", str(deb)], capture_output=True, text=True).stdout
    assert "Package: vx11d" in info and "Depends: python3 (>= 3.11), python3 (<< 3.12)" in info
    files = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True).stdout
    for path in ["./usr/lib/systemd/system/vx11.target",
                 "./usr/lib/systemd/system/vx11-gateway.socket",
                 "./usr/lib/sysusers.d/vx11.conf", "./usr/lib/tmpfiles.d/vx11.conf",
                 "./etc/vx11/vx11.yml", "./opt/vx11d/bin/vx11d", "./opt/vx11d/bin/vx11ctl",
                 "./usr/bin/vx11ctl -> /opt/vx11d/bin/vx11ctl"]:
        assert path in files, path
    conffiles = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], capture_output=True,
                               text=True).stdout
    # the admin's edits survive upgrades: the config, and Grafana's provisioning file
    assert sorted(conffiles.split()) == ["/etc/grafana/provisioning/dashboards/vx11d.yaml",
                                         "/etc/vx11/vx11.yml"]


def test_unpacked_venv_points_at_opt_and_runs(deb, tmp_path):
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True)
    venv = tmp_path / "opt" / "vx11d"
    assert (venv / "bin" / "vx11ctl").read_text().splitlines()[0] == "#!/opt/vx11d/bin/python3"
    leaked = subprocess.run(["grep", "-rlI", "/tmp/", str(venv / "bin"),
                             str(venv / "pyvenv.cfg")], capture_output=True, text=True).stdout
    assert not leaked, f"staging path leaked into: {leaked}"
    r = subprocess.run([str(venv / "bin" / "python3"), "-m", "vx11d.ctl.main", "config",
                        "check", "--path", str(tmp_path / "etc" / "vx11" / "vx11.yml")],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
