"""Degraded mode of a daemon whose DB writes fail: the cause, the backoff, the report.

A daemon that cannot write the shared DB (state dir read-only, disk full, DB file
missing or replaced, a writer holding the lock) does not exit: it keeps doing what it
can without the DB, holds what it could not record, and retries with backoff. One
:class:`WriteHealth` per daemon tracks that: the cause in a few words for STATUS and
the journal, when to try again, and the Prometheus view (``vx11_<daemon>_degraded``
by cause, ``vx11_<daemon>_db_write_failures_total`` by cause).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from . import journal
from .db import apply_migrations
from .errors import DbError

# cause code -> what a sysadmin reads in STATUS ("degraded: state disk full")
CAUSES = {
    "read_only": "state read-only",
    "disk_full": "state disk full",
    "db_missing": "DB file missing",
    "db_replaced": "DB file replaced",
    "locked": "DB locked",
    "corrupt": "DB file corrupt",
    "io_error": "DB I/O error",
    "other": "DB write failing",
}

# What a DB call can raise when the host is unwell: DbError from vx11d.db, and (until
# every path of vx11d.db wraps them) sqlite3 and OS errors from opening the file.
DB_FAULTS = (DbError, sqlite3.Error, OSError)
FILE_CAUSES = ("db_missing", "db_replaced")
FIRST_RETRY = 0.5
MAX_RETRY = 5.0


def cause_of(e: BaseException, path: str | None = None) -> str:
    """The cause code of a failed DB operation (one of :data:`CAUSES`); with the DB's
    ``path``, the file and its filesystem say it when SQLite's text is vague ("unable
    to open database file" on a read-only or full filesystem)."""
    code = getattr(e, "cause", None)
    if isinstance(code, str) and code in CAUSES:
        return code
    text = str(e).lower()
    if path is not None and "locked" not in text and "busy" not in text:
        code = _fs_cause(path)
        if code is not None:
            return code
    if "readonly" in text or "read-only" in text or "read only" in text:
        return "read_only"
    if "disk is full" in text or "no space" in text or "disk full" in text:
        return "disk_full"
    if "locked" in text or "busy" in text:
        return "locked"
    if "unable to open" in text or "no such file" in text or "disk i/o" in text:
        return "db_missing"
    return "other"


def _fs_cause(path: str) -> str | None:
    if not os.path.exists(path):
        return "db_missing"
    try:
        st = os.statvfs(os.path.dirname(path) or ".")
    except OSError:
        return None
    if st.f_flag & os.ST_RDONLY:
        return "read_only"
    if st.f_bavail * st.f_frsize < 64 * 1024:
        return "disk_full"
    return None


def file_identity(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the DB file at ``path``; None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class WriteHealth:
    """Whether this daemon's DB writes succeed; if not, why and when to retry."""

    def __init__(self, component: str, registry: CollectorRegistry, log: logging.Logger,
                 clock: Callable[[], float] = time.monotonic, path: str | None = None
                 ) -> None:
        self.component, self.log, self.clock, self.path = component, log, clock, path
        self.cause: str | None = None
        self.detail = ""
        self.since: float | None = None
        self.next_try = 0.0
        self._delay = FIRST_RETRY
        self.file_back = False  # a missing/replaced DB file is back at the path: try it
        self.degraded_gauge = Gauge(f"vx11_{component}_degraded", "1 while this daemon "
                                    "cannot write the shared DB, by cause", ["cause"],
                                    registry=registry)
        self.failures = Counter(f"vx11_{component}_db_write_failures", "DB write tries "
                                "that failed (the data is held and retried on the backoff "
                                "schedule: 0.5 s doubling to 5 s), by cause",
                                ["cause"], registry=registry)
        for c in CAUSES:
            self.degraded_gauge.labels(c).set(0)
            self.failures.labels(c)

    @property
    def degraded(self) -> bool:
        return self.cause is not None

    @property
    def writable(self) -> bool:
        """False while the DB file is missing or replaced: a write would go to a file no
        other daemon sees (the deleted inode the connection still holds)."""
        return self.cause not in FILE_CAUSES or self.file_back

    def due(self) -> bool:
        """True when writes may be tried (healthy, or the backoff has passed)."""
        return self.cause is None or self.clock() >= self.next_try

    def failed(self, e: BaseException, cause: str | None = None) -> str:
        """Record a failed write; returns its cause code. Logs when the cause changes."""
        code = cause or cause_of(e, self.path)
        self.file_back = False
        now = self.clock()
        if self.cause != code or now >= self.next_try:
            # a try: the first failure of a cause, or a scheduled retry (reads failing in
            # between are not tries: the counter follows the documented backoff)
            self.failures.labels(code).inc()
        if self.cause != code:
            if self.cause is not None:
                self.degraded_gauge.labels(self.cause).set(0)
            else:
                self.since = now
            self.cause = code
            self.degraded_gauge.labels(code).set(1)
            journal.event(self.log, f"{self.component}_degraded", "degraded: %s (%s); "
                          "holding what cannot be recorded, retrying", CAUSES[code], e,
                          level=logging.ERROR, cause=code)
            self._delay = FIRST_RETRY
            self.next_try = now + self._delay
        elif now >= self.next_try:  # the scheduled retry failed: back off further
            self._delay = min(self._delay * 2, MAX_RETRY)
            self.next_try = now + self._delay
        # (a failure between retries, e.g. a read, leaves the schedule alone)
        self.detail = str(e)
        return code

    def recovered(self, what: str = "") -> None:
        """A write went through: leave degraded mode (logged once)."""
        if self.cause is None:
            return
        took = self.clock() - (self.since or self.clock())
        journal.event(self.log, f"{self.component}_recovered", "DB writable again after "
                      "%s (%s)%s", _ago(took), CAUSES[self.cause],
                      f"; {what}" if what else "", cause=self.cause)
        self.degraded_gauge.labels(self.cause).set(0)
        self.cause, self.since, self.detail = None, None, ""
        self.file_back = False
        self._delay = FIRST_RETRY
        self.next_try = 0.0

    def text(self, pending: int, noun: str = "transition") -> str:
        """The STATUS part: ``degraded: state disk full, 2 transitions pending``."""
        if self.cause is None:
            return ""
        out = f"degraded: {CAUSES[self.cause]}"
        if pending:
            out += f", {pending} {noun}{'s' if pending != 1 else ''} pending"
        return out


def _ago(seconds: float) -> str:
    s = int(seconds + 0.5)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h"


def migrate(db: Any, health: WriteHealth, dbfile: DbFileWatch | None) -> bool:
    """Apply pending migrations for a daemon that must not fail its start on a DB
    fault: True when done; else the fault is reported to ``health`` (retried later)."""
    try:
        apply_migrations(db)
    except DB_FAULTS as e:
        health.failed(e)
        return False
    if dbfile is not None:
        dbfile.opened()
    return True


class DbFileWatch:
    """Notices the DB file deleted or replaced under an open connection (the open
    handle keeps working on the old inode, which no other process sees any more)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.identity = file_identity(path)

    def opened(self) -> None:
        """The connection was (re)opened on the file now at the path."""
        self.identity = file_identity(self.path)

    def error(self, problem: str) -> DbError:
        """The fault for :meth:`problem`'s answer, saying what to do (madre does not
        re-create a lost DB: that is the operator's choice)."""
        if problem == "db_missing":
            return DbError(f"{self.path} is gone; put a backup back (vx11ctl db restore "
                           "FILE) or start an empty one (vx11ctl db migrate)")
        return DbError(f"{self.path} names another file than the one opened; it is used "
                       "once it holds a sound vx11 database")

    def problem(self) -> str | None:
        """``db_missing``, ``db_replaced`` or None (the file at the path is ours)."""
        now = file_identity(self.path)
        if now is None:
            return "db_missing"
        if self.identity is not None and now != self.identity:
            return "db_replaced"
        return None
