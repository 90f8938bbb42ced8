"""The rotator under a real systemd: the timer, the hardened oneshot, journal, textfile."""

from __future__ import annotations

import re
import uuid

import pytest

from .conftest import journal, show, sysctl

pytestmark = pytest.mark.system

SERVICE, TIMER = "vx11-rotate.service", "vx11-rotate.timer"


def sh(sb, script: str, timeout: float = 60):
    r = sb.exec(["sh", "-ec", script], timeout=timeout)
    assert r.returncode == 0, f"{script}: {r.stdout}{r.stderr}"
    return r


def _root_in_config(sandbox, parent: str, units: tuple[str, ...]):
    """A fresh root under ``parent``, in a config of its own; undone afterwards (config
    restored, ``units`` stopped and reset, the root removed)."""
    root = f"{parent}/t-{uuid.uuid4().hex[:8]}"
    cfg_path = sandbox.etc_vx11 / "vx11.yml"
    saved = cfg_path.read_text()
    sandbox.write_config(saved.rstrip("\n") + f"\nrotate:\n  roots:\n    - path: {root}\n")
    try:
        yield root
    finally:
        sandbox.write_config(saved)
        for unit in units:
            sysctl(sandbox, "stop", unit, check=False)
            sysctl(sandbox, "reset-failed", unit, check=False)
        sandbox.exec(["rm", "-rf", root], timeout=60)


@pytest.fixture
def audit_root(sandbox):
    """A root under the unit's writable prefix, in a config of its own; both undone."""
    yield from _root_in_config(sandbox, "/srv/vx11-audit", (SERVICE, TIMER))


def test_timer_is_listed_daily_and_persistent(sandbox, audit_root):
    sysctl(sandbox, "start", TIMER)
    r = sysctl(sandbox, "list-timers", "--all", "--no-pager")
    assert TIMER in r.stdout and SERVICE in r.stdout, r.stdout
    props = show(sandbox, TIMER, "Persistent", "RandomizedDelayUSec", "TimersCalendar",
                 "ActiveState")
    assert props["Persistent"] == "yes" and props["ActiveState"] == "active"
    assert props["RandomizedDelayUSec"] not in ("0", "")
    assert "OnCalendar=daily" in props["TimersCalendar"] or \
        "*-*-* 00:00:00" in props["TimersCalendar"], props


def test_service_rotates_a_root_and_writes_a_valid_textfile(sandbox, audit_root):
    old, recent = "20200101T000000Z", "20991231T000000Z"
    sh(sandbox, f"""
        mkdir -p {audit_root}/{old}/sub {audit_root}/{recent} {audit_root}/notes
        echo hello > {audit_root}/{old}/a.txt
        echo deep > {audit_root}/{old}/sub/b.txt
        echo '{{}}' > {audit_root}/{old}/sub/SCORECARD.json
        ln -s /etc/passwd {audit_root}/{old}/link
        chown -R vx11:vx11 /srv/vx11-audit {audit_root}
    """)
    before = len(journal(sandbox, "VX11_EVENT=rotation_finished"))
    r = sandbox.exec(["systemctl", "start", SERVICE], timeout=120)
    assert r.returncode == 0, r.stderr + sandbox.exec(
        ["journalctl", "-u", SERVICE, "--no-pager", "-n", "30"]).stdout
    assert show(sandbox, SERVICE, "Result")["Result"] == "success"
    listing = sh(sandbox, f"tar -tzvf {audit_root}/archive/{old}.tar.gz").stdout
    assert f"{old}/a.txt" in listing and f"{old}/link -> /etc/passwd" in listing
    assert "SCORECARD" not in listing
    left = sh(sandbox, f"find {audit_root} -mindepth 1 | sort").stdout.split()
    assert f"{audit_root}/{old}/sub/SCORECARD.json" in left
    assert f"{audit_root}/{old}/a.txt" not in left and f"{audit_root}/{recent}" in left
    prom = "/var/lib/prometheus/node-exporter/vx11_rotate.prom"
    sh(sandbox, f"promtool check metrics < {prom}")
    text = sh(sandbox, f"cat {prom}").stdout
    assert re.search(r"^vx11_rotate_last_success_timestamp_seconds \S+", text, re.M)
    assert "vx11_rotate_dirs_archived 1.0" in text and "vx11_rotate_errors 0.0" in text
    events = journal(sandbox, "VX11_EVENT=rotation_finished")
    assert len(events) > before
    e = events[-1]
    assert e["VX11_ARCHIVED"] == "1" and e["VX11_ERRORS"] == "0"
    assert int(e["VX11_BYTES_IN"]) == len("hello\n") + len("deep\n")
    assert e["_SYSTEMD_UNIT"] == SERVICE and e["_UID"] != "0"
    # vx11ctl rotate drives the same unit and shows the stored report
    out = sh(sandbox, "/opt/vx11d/bin/vx11ctl rotate", timeout=120).stdout
    assert out.startswith(f"{SERVICE}: 0 archived") and "verify existing archive" in out


def test_service_exposure_is_at_most_1(sandbox):
    r = sandbox.exec(["systemd-analyze", "security", SERVICE], timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([\d.]+)", r.stdout)
    assert m, r.stdout[-1000:] + r.stderr
    assert float(m.group(1)) <= 1.0, r.stdout
    props = show(sandbox, SERVICE, "PrivateNetwork", "ProtectSystem", "User", "Type",
                 "CapabilityBoundingSet")
    assert props["PrivateNetwork"] == "yes" and props["ProtectSystem"] == "strict"
    assert props["User"] == "vx11" and props["Type"] == "oneshot"
    assert props["CapabilityBoundingSet"] == ""


@pytest.fixture
def state_root(sandbox):
    """A root where tmpfiles puts them (2770 root:vx11), in a config of its own; undone."""
    yield from _root_in_config(sandbox, "/var/lib/vx11/audit", (SERVICE,))


def test_a_root_run_then_the_service_run_both_succeed(sandbox, state_root):
    """`vx11ctl rotate --aggressive` as root (umask 022) must leave archive/ so that the
    next vx11-rotate.service run (user vx11) can write in it, and must not delete the
    archive it has just made of a dir older than aggressive_days."""
    first, second = "20200101T000000Z", "20200201T000000Z"
    sh(sandbox, f"""
        install -d -m 2770 -o root -g vx11 /var/lib/vx11/audit {state_root} \
            {state_root}/{first}
        echo one > {state_root}/{first}/a.txt
        test -e /var/lib/vx11/vx11.db || setpriv --reuid=vx11 --regid=vx11 --init-groups \
            /opt/vx11d/bin/vx11ctl db migrate
    """)
    r = sandbox.exec(["sh", "-c", "umask 022; /opt/vx11d/bin/vx11ctl rotate --aggressive"],
                     timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "delete archive" not in r.stdout, r.stdout
    st = sh(sandbox, f"stat -c '%U:%G %a' {state_root}/archive").stdout.split()
    assert st == ["root:vx11", "2770"], st
    sh(sandbox, f"test -s {state_root}/archive/{first}.tar.gz && test ! -e {state_root}/{first}")
    sh(sandbox, f"""
        install -d -m 2770 -o root -g vx11 {state_root}/{second}
        echo two > {state_root}/{second}/b.txt
        chgrp vx11 {state_root}/{second}/b.txt && chmod 0640 {state_root}/{second}/b.txt
    """)
    r = sandbox.exec(["systemctl", "start", SERVICE], timeout=120)
    logs = sandbox.exec(["journalctl", "-u", SERVICE, "--no-pager", "-n", "20"]).stdout
    assert r.returncode == 0, r.stderr + logs
    assert show(sandbox, SERVICE, "Result")["Result"] == "success", logs
    sh(sandbox, f"test -s {state_root}/archive/{second}.tar.gz && test ! -e "
       f"{state_root}/{second}")
    listing = sh(sandbox, f"tar -tzf {state_root}/archive/{second}.tar.gz").stdout
    assert f"{second}/b.txt" in listing
