"""Issue 24 (items 8-13): every line a sysadmin reads after a bad day is true.

A scripted bad day on the sandbox's real systemd (madre, the reaper and the
socket-activated gateway on a tmpfs state dir of their own): the smoke check, a full
state disk, a write lock held past the write deadline, a read-only state dir, the DB
file deleted and a backup put back. Then every line of ``vx11ctl status``, ``hijas
list``, ``smoke``, ``scorecard``, the units' STATUS lines and the last 200 journal lines
is read with the rules of tests/textcheck.py: no epoch float, no Python repr, no
doubled phrase, no contradiction, no command telling you to run itself.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests import textcheck as tc
from tests.support import poll_for

from .conftest import journal, show
from .test_db_restore_systemd import DB, STATE

pytestmark = pytest.mark.system

PY = "/opt/vx11d/bin/python"
LOCK = ("import sqlite3,sys,time; c=sqlite3.connect('/var/lib/vx11/vx11.db', "
        "isolation_level=None); c.execute('BEGIN IMMEDIATE'); time.sleep(float(sys.argv[1]))")
UNITS = ("vx11-madre.service", "vx11-reaper.service", "vx11-gateway.service")


class Day:
    """What the sysadmin ran and read, command by command."""

    def __init__(self, sb) -> None:
        self.sb = sb
        self.read: list[tuple[str, list[str]]] = []

    def run(self, cmd: str, ok: bool | None = True) -> list[str]:
        r = self.sb.exec(["sh", "-c", cmd], timeout=180)
        if ok is not None:
            assert (r.returncode == 0) == ok, f"{cmd}: {r.returncode}\n{r.stdout}{r.stderr}"
        lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
        self.read.append((cmd, lines))
        return lines

    def status_of(self, unit: str) -> str:
        return show(self.sb, unit, "StatusText")["StatusText"]


def _madre_says(day: Day, words: str, timeout: float = 30) -> None:
    poll_for(lambda: words in day.status_of("vx11-madre.service"), timeout=timeout,
             interval=0.5, what=f"madre's STATUS to say {words!r}")


def _madre_clean(day: Day) -> None:
    poll_for(lambda: "degraded" not in day.status_of("vx11-madre.service")
             and "pending" not in day.status_of("vx11-madre.service"), timeout=60,
             interval=0.5, what="madre to leave degraded mode")


def test_a_bad_day_leaves_only_true_lines(state_set):
    sb = state_set
    day = Day(sb)
    since = time.time()
    # the first five minutes: smoke, then status and the list right after it (item 8)
    day.run("vx11ctl smoke")
    day.run("vx11ctl status")
    day.run("vx11ctl hijas list")
    day.run("vx11ctl db backup /root/bad-day.db")
    # a full state disk while a hija ends
    day.run("vx11ctl hijas spawn sleeper --ttl 4s")
    day.run(f"dd if=/dev/zero of={STATE}/filler bs=64k", ok=False)
    _madre_says(day, "degraded: state disk full")
    day.run("vx11ctl status")
    day.run(f"rm {STATE}/filler")
    _madre_clean(day)
    # a writer holding the lock past the write deadline
    day.run("vx11ctl hijas spawn sleeper --ttl 3s")
    holder = threading.Thread(target=sb.exec, args=([PY, "-c", LOCK, "14"],),
                              kwargs={"timeout": 60}, daemon=True)
    holder.start()
    _madre_says(day, "degraded: DB locked")
    day.run("vx11ctl status")
    holder.join(60)
    _madre_clean(day)
    # a read-only state dir: every writer stopped (so it can be remounted), then started
    day.run("systemctl stop vx11-gateway.socket vx11-gateway.service vx11-reaper.service "
            "vx11-madre.service")
    day.run(f"mount -o remount,ro {STATE}")
    try:
        day.run("systemctl start vx11-madre.service vx11-reaper.service "
                "vx11-gateway.socket")
        _madre_says(day, "degraded: state read-only")
        day.run("vx11ctl status")
        day.run("vx11ctl hijas list", ok=None)
    finally:
        day.run(f"mount -o remount,rw {STATE}")
    _madre_clean(day)
    # the DB file deleted (madre refuses to re-create it), then the backup put back
    day.run("vx11ctl hijas spawn sleeper --ttl 300s")
    day.run(f"rm -f {DB}")
    _madre_says(day, "DB file missing")
    day.run("vx11ctl status")
    day.run("vx11ctl hijas list", ok=False)
    day.run("vx11ctl db check", ok=False)
    day.run("vx11ctl db restore /root/bad-day.db")
    _madre_clean(day)
    day.run("vx11ctl db check")
    day.run("vx11ctl status")
    day.run("vx11ctl hijas list")
    day.run("vx11ctl scorecard", ok=None)
    statuses = [f"{u}: {day.status_of(u)}" for u in UNITS]
    entries = [e for e in journal(sb, f"--since=@{int(since) - 1}", "-n", "200",
                                  *(f"_SYSTEMD_UNIT={u}" for u in UNITS))]
    logged = [tc.Entry(f"{e.get('_SYSTEMD_UNIT', '')}[{e.get('_PID', '')}]",
                       int(e["__REALTIME_TIMESTAMP"]) / 1e6, str(e.get("MESSAGE", "")))
              for e in entries]

    found: list[str] = []
    for cmd, lines in day.read:
        if cmd.startswith("vx11ctl"):
            found += [f"[{cmd}] {f}" for f in tc.snapshot(cmd, lines)]
    found += tc.prose(statuses) + tc.contradictions(statuses)
    found += tc.prose([e.text for e in logged]) + tc.doubled_lines(logged)
    report = "\n".join(f"$ {c}\n" + "\n".join(ls) for c, ls in day.read)
    report += "\n# STATUS\n" + "\n".join(statuses) + "\n# journal\n" + "\n".join(
        f"{e.source} {e.text}" for e in logged)
    # the items the generic rules cannot see: the smoke's own probes are no attack
    # (item 10), one daemon says it saved the lost DB's content (item 12)
    found += [f"smoke probe logged as an attack: {e.text}" for e in logged
              if "rejected missing credential" in e.text]
    saved = [e for e in logged if "saved the lost database's content" in e.text]
    if len(saved) > 1:
        found.append("saved the lost DB's content, said by " + ", ".join(
            e.source for e in saved))
    print(report)  # what was read (pytest -s shows it)
    assert len(logged) >= 20, report
    assert not found, "\n".join(found) + "\n\n" + report
