"""madre under real host faults in the sandbox: a full state filesystem, a read-only one.

The state dir is a small tmpfs of its own for this module, so "full" costs 16 MB and
"read-only" is a real ``mount -o remount,ro``; systemd, journald and the hija units
are the real ones.
"""

from __future__ import annotations

import json
import threading

import pytest

from tests.support import poll_for

from .conftest import show, sysctl

pytestmark = pytest.mark.system

STATE = "/var/lib/vx11"
PY = "/opt/vx11d/bin/python"
ROW = ("import json,sqlite3,sys; c=sqlite3.connect('file:/var/lib/vx11/vx11.db?mode=ro',"
       "uri=True); c.row_factory=sqlite3.Row; r=c.execute('SELECT * FROM spawner_hijas "
       "WHERE id=?',(sys.argv[1],)).fetchone(); e=c.execute(\"SELECT count(*) FROM events "
       "WHERE subject=? AND event='hija_expired'\",(sys.argv[1],)).fetchone()[0]; "
       "print(json.dumps({**dict(r), 'expired_events': e} if r else None))")
LOCK = ("import sqlite3,sys,time; c=sqlite3.connect('/var/lib/vx11/vx11.db', "
        "isolation_level=None); c.execute('BEGIN IMMEDIATE'); time.sleep(float(sys.argv[1]))")


def sh(sb, *argv: str, ok: bool = True):
    r = sb.exec(list(argv), timeout=60)
    if ok:
        assert r.returncode == 0, f"{argv}: {r.stdout}{r.stderr}"
    return r


def row(sb, hid: str):
    return json.loads(sh(sb, PY, "-c", ROW, hid).stdout)


def madre(sb) -> dict[str, str]:
    return show(sb, "vx11-madre.service", "ActiveState", "StatusText", "NRestarts",
                "Result")


@pytest.fixture(scope="module")
def small_state(sandbox):
    """madre alone, on a 16 MB tmpfs state dir; all undone afterwards."""
    from .conftest import REPO

    sandbox.write_config((REPO / "packaging" / "sandbox" / "vx11.yml").read_text())
    sysctl(sandbox, "stop", "vx11-madre.service", "vx11-gateway.socket",
           "vx11-gateway.service", "vx11-reaper.service", check=False)
    sh(sandbox, "mount", "-t", "tmpfs", "-o", "size=16m,mode=0770", "tmpfs", STATE)
    sh(sandbox, "chgrp", "vx11", STATE)
    sh(sandbox, "systemd-tmpfiles", "--create",
       str(REPO / "packaging" / "tmpfiles.d" / "vx11.conf"))
    sysctl(sandbox, "reset-failed", check=False)
    sysctl(sandbox, "daemon-reload")
    try:
        yield sandbox
    finally:
        sysctl(sandbox, "stop", "vx11-madre.service", "vx11-hija-*", check=False)
        sh(sandbox, "rm", "-f", f"{STATE}/filler", ok=False)
        sh(sandbox, "mount", "-o", "remount,rw", STATE, ok=False)
        sh(sandbox, "umount", "-l", STATE, ok=False)
        sysctl(sandbox, "reset-failed", check=False)


def spawn(sb, ttl: str) -> str:
    out = sh(sb, "vx11ctl", "hijas", "spawn", "sleeper", "--ttl", ttl, "--json").stdout
    h = json.loads(out)
    assert h["status"] == "running", h
    return h["id"]


def test_full_disk_madre_exited_69_and_lost_the_hija_now_keeps_running_and_records_it(
        small_state):
    """Regression (issue 10 finding 2): a hija ending on a full state disk made madre
    exit 69, crash-loop to failed, and reconcile later called the hija lost."""
    sb = small_state
    sysctl(sb, "restart", "vx11-madre.service")
    restarts = madre(sb)["NRestarts"]
    hid = spawn(sb, "4s")
    r = sh(sb, "dd", "if=/dev/zero", f"of={STATE}/filler", "bs=64k", ok=False)
    assert "No space left" in r.stderr, r.stderr
    # the hija ends (systemd's TTL) while nothing can be written
    st = poll_for(lambda: (m := madre(sb))["StatusText"].endswith(
        "degraded: state disk full, 1 transition pending") and m, timeout=30, interval=0.5,
        what="madre to report the held end")
    assert st["ActiveState"] == "active"
    assert row(sb, hid)["status"] == "running"  # not written: the disk is full
    sh(sb, "rm", f"{STATE}/filler")
    got = poll_for(lambda: (x := row(sb, hid))["status"] != "running" and x, timeout=30,
                   interval=0.5, what="the held end to be recorded")
    assert got["status"] == "expired" and got["result"] == "timeout", got
    assert got["expired_events"] == 1
    m = poll_for(lambda: "degraded" not in (x := madre(sb))["StatusText"] and x,
                 timeout=20, interval=0.5, what="madre to leave degraded mode")
    assert m["ActiveState"] == "active" and m["NRestarts"] == restarts, m
    r = sb.exec(["journalctl", "-u", "vx11-madre", "-o", "cat", "--no-pager",
                 "VX11_EVENT=madre_recovered"], timeout=30)
    assert "1 held transition recorded" in r.stdout, r.stdout


def test_write_lock_held_past_watchdog_madre_kept_waiting_now_holds_and_records(
        small_state):
    """Regression (issue 10 finding 4, madre's side): a writer holding the DB lock
    longer than WatchdogSec (10 s) stalled madre's loop on its 30 s write deadline and
    got it killed by the watchdog; now the end is held, and recorded once released."""
    sb = small_state
    restarts = madre(sb)["NRestarts"]
    hid = spawn(sb, "3s")
    holder = threading.Thread(target=sh, args=(sb, PY, "-c", LOCK, "14"), daemon=True)
    holder.start()
    try:
        m = poll_for(lambda: (x := madre(sb))["StatusText"].endswith(
            "degraded: DB locked, 1 transition pending") and x, timeout=20, interval=0.5,
            what="madre to hold the end while the lock is held")
        assert m["ActiveState"] == "active"
    finally:
        holder.join(30)
    got = poll_for(lambda: (x := row(sb, hid))["status"] != "running" and x, timeout=30,
                   interval=0.5, what="the held end to be recorded")
    assert got["status"] == "expired" and got["expired_events"] == 1, got
    m = madre(sb)
    assert m["ActiveState"] == "active" and m["NRestarts"] == restarts, m


BACKUP = ("import sqlite3,sys; s=sqlite3.connect('file:/var/lib/vx11/vx11.db?mode=ro', "
          "uri=True); d=sqlite3.connect(sys.argv[1]); s.backup(d); d.close()")


def test_deleted_db_split_brain_lost_hijas_now_held_and_restored_by_madre(small_state):
    """Regression (issue 10 finding 3, madre's side): after `rm vx11.db*` writes went on
    into the deleted file and the hijas spawned around the deletion were gone from the
    records after a restart. Now madre notices, writes nothing, and once an older
    backup is restored re-creates the rows it lacks, with their ends."""
    sb = small_state
    sysctl(sb, "restart", "vx11-madre.service")
    sh(sb, PY, "-c", BACKUP, "/root/backup.db")  # taken before the two spawns
    short, long_ = spawn(sb, "4s"), spawn(sb, "60s")
    sh(sb, "sh", "-c", f"rm -f {STATE}/vx11.db {STATE}/vx11.db-wal {STATE}/vx11.db-shm")
    poll_for(lambda: "degraded: DB file missing" in madre(sb)["StatusText"], timeout=20,
             interval=0.5, what="madre to notice the deleted DB")
    poll_for(lambda: "1 transition pending" in madre(sb)["StatusText"], timeout=20,
             interval=0.5, what="madre to hold the short hija's end")
    assert sb.exec(["test", "-e", f"{STATE}/vx11.db"]).returncode != 0  # no split file
    sh(sb, "install", "-m", "0660", "-g", "vx11", "/root/backup.db", f"{STATE}/vx11.db")
    got = poll_for(lambda: (x := row(sb, short)) and x["status"] != "running" and x,
                   timeout=30, interval=0.5, what="the short hija's end in the restored DB")
    assert got["status"] == "expired", got
    other = row(sb, long_)
    assert other is not None and other["status"] == "running", other
    assert show(sb, f"vx11-hija-{long_}.service", "ActiveState")["ActiveState"] == "active"
    m = poll_for(lambda: "degraded" not in (x := madre(sb))["StatusText"] and x, timeout=20,
                 interval=0.5, what="madre to leave degraded mode")
    assert m["ActiveState"] == "active"


def test_read_only_state_dir_madre_restart_crash_looped_to_failed_now_degrades(small_state):
    """Regression (issue 10 finding 1): a madre restart on a read-only state dir
    crash-looped into its start limit (failed) and stayed down after the fix."""
    sb = small_state
    sysctl(sb, "stop", "vx11-madre.service")  # a writer holds no file: remount may work
    sh(sb, "mount", "-o", "remount,ro", STATE)
    try:
        sysctl(sb, "start", "vx11-madre.service")
        m = poll_for(lambda: "degraded: state read-only" in (x := madre(sb))["StatusText"]
                     and x, timeout=30, interval=0.5,
                     what="madre degraded on a read-only state dir")
        assert m["ActiveState"] == "active" and m["NRestarts"] == "0", m
    finally:
        sh(sb, "mount", "-o", "remount,rw", STATE)
    # fixed: madre comes back by itself (at most one restart, for a fresh namespace)
    m = poll_for(lambda: (x := madre(sb))["ActiveState"] == "active"
                 and "degraded" not in x["StatusText"] and x, timeout=40, interval=0.5,
                 what="madre to recover after the remount")
    assert int(m["NRestarts"]) <= 1, m
    hid = spawn(sb, "30s")  # and it supervises again
    assert row(sb, hid)["status"] == "running"
