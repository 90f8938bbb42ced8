"""Issue 21, items 3-6 under real systemd: every daemon's degraded state ends when its
cause ends, retries follow the documented backoff, a full disk is seen before a write
fails on it, and records keep what was measured (and only what was measured)."""

from __future__ import annotations

import json
import re
import shlex
import time

import pytest

from tests.support import poll_for
from vx11d.madre import memory

from .conftest import journal, show, sysctl
from .test_db_restore_systemd import DB, RAW_BACKUP, STATE, py, rows, spawn
from .test_faults_gateway import health, sh

pytestmark = pytest.mark.system

ROW = ("import json,sqlite3,sys; c=sqlite3.connect('file:/var/lib/vx11/vx11.db?mode=ro',"
       "uri=True); c.row_factory=sqlite3.Row; r=c.execute('SELECT * FROM spawner_hijas "
       "WHERE id=?',(sys.argv[1],)).fetchone(); print(json.dumps(dict(r) if r else None))")


def metric(sb, port: int, name: str, **labels: str) -> float | None:
    r = sb.exec(["curl", "-sf", f"http://127.0.0.1:{port}/metrics"], timeout=10)
    if r.returncode != 0:
        return None
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pat = re.compile(rf"^{re.escape(name)}\{{{re.escape(want)}\}} (\S+)$", re.M)
    m = pat.search(r.stdout)
    return float(m.group(1)) if m else None


def status(sb, unit: str) -> str:
    return show(sb, unit, "StatusText")["StatusText"]


def test_reaper_stayed_degraded_db_replaced_with_no_hija_running(state_set):
    """Item 3: after the DB file was replaced by a sound copy, the reaper stayed
    `degraded: DB file replaced` (vx11_reaper_degraded{cause="db_replaced"} 1, what
    VX11StateDbLost fires on) for minutes when no hija ran."""
    sb = state_set
    py(sb, RAW_BACKUP, "/root/same.db")
    sh(sb, f"install -m 0660 -g vx11 /root/same.db {DB}.new && mv -f {DB}.new {DB}")
    poll_for(lambda: [e for e in journal(sb, "VX11_EVENT=reaper_degraded",
                                         "_SYSTEMD_UNIT=vx11-reaper.service")
                      if e.get("VX11_CAUSE") == "db_replaced"],
             timeout=20, interval=0.5, what="the reaper to notice the replaced file")
    poll_for(lambda: metric(sb, 9713, "vx11_reaper_degraded", cause="db_replaced") == 0.0
             and "degraded" not in status(sb, "vx11-reaper.service"),
             timeout=20, interval=0.5, what="the reaper to take the new file")


# What a clean close of the DB's last connection leaves: no -wal, no -shm (SQLite
# deletes both); a daemon killed or stopped without one leaves them. madre started on a
# read-only state dir reads the DB with them and cannot without them (SQLite must create
# the index): both happen, and the test made them by chance (flaky). Now each is made.
KEEP_SIDECARS = ("import os,sqlite3,sys; c=sqlite3.connect(sys.argv[1]); "
                 "c.execute('SELECT count(*) FROM sqlite_master').fetchone(); os._exit(0)")
DROP_SIDECARS = ("import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); "
                 "c.execute('PRAGMA wal_checkpoint(TRUNCATE)'); c.close()")


@pytest.mark.parametrize("sidecars", ["kept", "gone"])
def test_held_end_lost_its_memory_peak_across_madres_exit_69_restart(state_set, sidecars):
    """Item 4: an end held through a read-only spell, then re-read from the journal after
    madre's one exit-69 restart (fresh mount namespace), was recorded with no peak.
    ``gone``: madre cannot even read the DB during the spell; the end is recorded too."""
    sb = state_set
    hid = spawn(sb, {"template": "sleeper", "ttl_s": 12})  # ends while madre is read-only
    sysctl(sb, "stop", "vx11-gateway.socket", "vx11-gateway.service", "vx11-reaper.service",
           "vx11-madre.service")  # no writer left: the filesystem can be remounted ro
    py(sb, KEEP_SIDECARS if sidecars == "kept" else DROP_SIDECARS, DB)
    present = sh(sb, f"ls {DB}-wal {DB}-shm 2>/dev/null || true").stdout.split()
    assert len(present) == (2 if sidecars == "kept" else 0), present
    sh(sb, f"mount -o remount,ro {STATE}")
    try:
        sysctl(sb, "start", "vx11-madre.service")
        if sidecars == "kept":
            poll_for(lambda: "1 transition pending" in status(sb, "vx11-madre.service"),
                     timeout=40, interval=0.5, what="madre to hold the end (read-only)")
        else:  # it says why it cannot see; the hija ends by systemd's TTL meanwhile
            poll_for(lambda: "hija records unreadable; degraded: state read-only" in
                     status(sb, "vx11-madre.service"), timeout=40, interval=0.5,
                     what="madre to say it cannot read the hijas")
            unit = f"vx11-hija-{hid}.service"
            poll_for(lambda: sb.exec(["systemctl", "is-active", unit]).stdout.strip()
                     in ("inactive", "failed"), timeout=40, interval=0.5,
                     what="the hija to end by its TTL")
    finally:
        sh(sb, f"mount -o remount,rw {STATE}")
    got = poll_for(lambda: (r := _row(sb, hid)) and r["status"] != "running" and r,
                   timeout=60, interval=0.5, what="the end recorded")
    assert got["status"] == "expired", got
    assert got["memory_peak"] is not None and 0 < got["memory_peak"] <= got["memory_max"], got
    restarts = show(sb, "vx11-madre.service", "NRestarts")["NRestarts"]
    assert int(restarts) >= 1, f"madre did not restart (the case of the bug): {restarts}"


def _row(sb, hid: str):
    return json.loads(py(sb, ROW, hid).stdout)


def test_memory_peak_was_another_cgroups_figure_when_not_its_own(state_set):
    """Item 5: where the hija's memory cgroup is not its own (the v1 controller not
    delegated), the end probe read a parent's memory.max_usage_in_bytes: 1.3 GB for
    `sleep infinity` under a 512 MiB limit. Now no figure is reported there."""
    sb = state_set
    # the probe madre gives every hija, in a unit whose process sits in the root memory
    # cgroup (as without delegation): its own cgroup for systemd, not for memory
    script = ("echo $$ > /sys/fs/cgroup/memory/cgroup.procs || exit 3\n"
              f"exec /bin/sh -c {shlex.quote(memory._PROBE)} vx11-memory-probe "
              "/run/vx11t-probe x\n")
    py(sb, "import sys; open('/run/vx11t-probe.sh', 'w').write(sys.argv[1])", script)
    r = sb.exec(["systemd-run", "--wait", "--quiet", "-p", "MemoryMax=32M", "/bin/sh",
                 "/run/vx11t-probe.sh"], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    text = sh(sb, "cat /run/vx11t-probe/x && rm -r /run/vx11t-probe /run/vx11t-probe.sh").stdout
    assert "peak \n" in text and "oom_kill \n" in text, text
    # and a real hija, whose memory cgroup is its own here, keeps its real figure
    hid = spawn(sb, {"template": "sleeper", "ttl_s": 2})
    got = poll_for(lambda: (x := _row(sb, hid)) and x["status"] != "running" and x,
                   timeout=30, interval=0.5, what="the hija's end")
    assert got["memory_peak"] is None or got["memory_peak"] <= got["memory_max"], got


def test_db_missing_retries_followed_no_backoff_and_the_reaper_logged_every_scan(
        state_set):
    """Item 6: while the DB was missing madre counted ~10 write failures a second (the
    docs promise 0.5 s doubling to 5 s) and the reaper logged "could not read hija
    records" every scan."""
    sb = state_set
    spawn(sb)  # a hija: the reaper looks up its record each scan
    sh(sb, f"rm -f {DB} {DB}-wal {DB}-shm")
    poll_for(lambda: "DB file missing" in status(sb, "vx11-madre.service"), timeout=20,
             interval=0.5, what="madre degraded")
    since = time.time()
    t0 = metric(sb, 9712, "vx11_madre_db_write_failures_total", cause="db_missing") or 0.0
    time.sleep(12)  # a measured window, not a wait for a condition
    t1 = metric(sb, 9712, "vx11_madre_db_write_failures_total", cause="db_missing") or 0.0
    # backoff 0.5, 1, 2, 4, 5, 5 s: at most 5 tries in 12 s (a few reads may race one)
    assert t1 - t0 <= 6, (t0, t1)
    spam = [e for e in journal(sb, "VX11_EVENT=hija_lookup_failed",
                               "_SYSTEMD_UNIT=vx11-reaper.service",
                               f"--since=@{since:.0f}")]
    assert len(spam) <= 1, [e.get("MESSAGE") for e in spam]


def test_full_disk_showed_health_ok_until_the_first_write_failed(state_set):
    """Item 6: a full state disk showed /health ok until some write failed (>= 12 s);
    now the free-space probe (under 256 KiB free) reports it within one health pass."""
    sb = state_set
    sh(sb, f"dd if=/dev/zero of={STATE}/fill bs=64k 2>/dev/null; sync", check=False)
    t0 = time.monotonic()
    h = poll_for(lambda: (x := health(sb))["status"] == 503 and x, timeout=8, interval=0.3,
                 what="/health to see the full disk")
    assert h["body"] == {"status": "degraded", "cause": "disk_full"}, h
    poll_for(lambda: "state disk full" in status(sb, "vx11-madre.service"), timeout=8,
             interval=0.3, what="madre to see the full disk")
    assert time.monotonic() - t0 < 8
    sh(sb, f"rm -f {STATE}/fill")
    poll_for(lambda: health(sb)["status"] == 200, timeout=20, interval=0.5,
             what="/health ok once space is back")
    poll_for(lambda: "degraded" not in status(sb, "vx11-madre.service"), timeout=20,
             interval=0.5, what="madre ok once space is back")
    assert spawn(sb) in rows(sb)
