"""madre as a runtime service: the bus fd and the wake socket in the asyncio loop.

``start()`` reconciles the DB against systemd before READY; after that the loop reacts
at once to three file descriptors: the D-Bus monitor connection (unit state changes,
so ends are recorded promptly), the wake datagram socket the gateway and vx11ctl send
to after writing a request, and an inotify watch on the DB's directory (the file
deleted or replaced). ``tick()`` is the timed pass: the expiry backstop, activation
window ends, the retries of a degraded DB, and a periodic reconcile. It runs when the
earliest of those is due (``due_in()``), not on a clock: with nothing live, madre
sleeps RECONCILE_IDLE between passes (the watchdog ping aside).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import math
import os
import socket
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .. import dirwatch, hijas, journal, textfmt
from ..config import Config
from ..db import Database, low_space, stale_read_only_view
from ..degraded import DB_FAULTS, DbFileWatch, WriteHealth, migrate
from ..errors import DbError, StaleMountNamespace, SystemdError
from ..hijas import ENDED, SETTLED
from .registry import Registry
from .systemd import SystemdClient
from .windows import Windows

log = logging.getLogger("vx11.madre")

RECONCILE_EVERY = 30.0  # while a hija, a window or an awaited end is live
# with nothing live, the reconcile only looks for what no event reports (a unit named
# like a hija started by someone else, requests a lost wake-up missed)
RECONCILE_IDLE = 300.0
BATCH = 32  # requests started per loop pass (each is a D-Bus round trip or three)
MAX_WAITERS = 4096  # settle notices madre remembers (oldest dropped: they re-read the DB)


class Metrics:
    """madre's metrics, on the registry passed in."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.running = Gauge("vx11_hijas_running", "hijas whose unit is running",
                             registry=registry)
        self.spawned = Counter("vx11_hijas_spawned", "hija units started",
                               registry=registry)
        self.ended = Counter("vx11_hijas_ended", "hijas ended, by template and reason "
                             "(oom: killed by the kernel for exceeding memory_max)",
                             ["template", "reason"], registry=registry)
        self.spawn_seconds = Histogram(
            "vx11_hija_spawn_duration_seconds", "from madre picking a request up to the "
            "unit running", registry=registry,
            buckets=(.005, .01, .02, .05, .1, .2, .5, 1, 2, 5))
        self.activations = Gauge("vx11_activations_live", "live activation windows by "
                                 "component (1: a window is open)", ["component"],
                                 registry=registry)
        self.next_expiry = Gauge("vx11_hijas_next_expiry_seconds", "seconds until the next "
                                 "running hija expires (0 when none runs)", registry=registry)
        self.reconcile = Counter("vx11_madre_reconcile_fixes", "DB/systemd disagreements "
                                 "settled by reconcile, by kind", ["kind"], registry=registry)
        for k in ("lost", "ended", "adopted", "orphans", "recreated"):
            self.reconcile.labels(k)
        self.wakes = Counter("vx11_madre_wakeups", "wake datagrams received",
                             registry=registry)
        self.held = Gauge("vx11_madre_transitions_pending", "hija transitions seen but "
                          "not yet recorded (the DB refuses writes)", registry=registry)

    def known_templates(self, cfg: Config) -> None:
        """Every template's end counters exist from the start (at 0), so rate() and
        alerts see the first OOM kill."""
        for t in cfg.madre.templates:
            for r in ENDED:
                self.ended.labels(t, r)


def bind_wake_socket(path: str, group: str = "vx11") -> tuple[socket.socket, bool]:
    """The wake datagram socket, and whether the group the gateway runs as can write
    to it (if not, only root can wake madre)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    s.bind(path)
    s.setblocking(False)
    try:
        gid = grp.getgrnam(group).gr_gid
        if os.stat(path).st_gid != gid:  # under systemd, Group=vx11 already made it so
            os.chown(path, -1, gid)
        os.chmod(path, 0o660)
    except (KeyError, PermissionError) as e:
        log.warning("wake socket %s: cannot give it to group %s (%s); only root can "
                    "wake madre, the gateway's requests wait for the tick", path, group, e)
        return s, False
    return s, True


class MadreService:
    """The hija supervisor."""

    component = "madre"

    def __init__(self, cfg: Config, db: Database, sd: SystemdClient,
                 registry: CollectorRegistry, *, wake_path: str | None = None,
                 clock: Callable[[], float] = time.monotonic, wake_group: str = "vx11"
                 ) -> None:
        self.cfg, self.db, self.sd = cfg, db, sd
        self.m = Metrics(registry)
        self.m.known_templates(cfg)
        self.health = WriteHealth("madre", registry, log, path=db.path)
        db.fault_log_level = logging.DEBUG  # self.health tells each fault and its end
        self.reg = Registry(cfg, db, sd, self.m, health=self.health)
        self.dbfile = DbFileWatch(db.path)
        self.migrated = False
        self.reg.on_settled = self._settled
        # hija id -> abstract address of a waiter (the gateway) to notify when it settles
        self._waiters: dict[str, bytes] = {}
        self.win = Windows(cfg, db, sd, self.m)
        self.win.may_write = lambda: self.health.writable and self.health.due()
        self.win.on_write_error = self.health.failed
        self.wake_path = wake_path or cfg.gateway.madre_wake_socket
        self.wake_group = wake_group
        self.sock: socket.socket | None = None
        self.interval = float(cfg.madre.tick)
        self._last_reconcile = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.clock = clock
        self._last_pass = float("-inf")  # when the last timed pass ran (monotonic)
        self._pass_wanted = False  # a plain wake (a window, a stop, vx11ctl): pass now
        self._poke: Callable[[], None] = lambda: None
        self._running: int | None = 0  # at the last refresh; None: unreadable
        self._woken_by_gateway = True  # False: its requests are found by a pass each tick
        self.dirwatch: dirwatch.DirWatch | None = None
        self.m.next_expiry.set_function(self._seconds_to_expiry)

    def attach_waker(self, poke: Callable[[], None]) -> None:
        """The runtime's: called when an event changed what is due next."""
        self._poke = poke

    def _seconds_to_expiry(self) -> float:
        at = self.reg.earliest_expiry
        return max(0.0, at - self.reg.clock()) if self._running and at is not None else 0.0

    def _live(self) -> bool:
        """Anything madre watches over: a hija, a window, an awaited or held end."""
        return bool(self._running or self.win.live or self.reg.tracked
                    or self.reg.end_awaited() or self.reg.held)

    def on_watchdog(self) -> None:
        """At each watchdog ping (every WatchdogSec/2, a wake the loop makes anyway): the
        free-space probe and the DB file check, so a full disk or a deleted file shows
        in STATUS while madre is idle too."""
        before = self.health.cause
        self._check_file()
        self._check_space()
        if self.health.cause != before:
            self._pass_wanted = True
            self._poke()

    def due_in(self) -> float | None:
        """Seconds until the next timed pass is due.

        The earliest of: a pass asked for by a plain wake; the DB retry of a degraded
        madre; the backstop of the first running hija (expiry + backstop_grace); the end
        of the first activation window; the next reconcile (RECONCILE_EVERY while
        anything is live, RECONCILE_IDLE when not). Never sooner than ``madre.tick``
        after the previous pass, so what cannot be done at once (a unit whose stop is
        still in flight) is retried at that pace, not in a spin. Every ``madre.tick``
        when the gateway cannot wake madre (the wake socket's group could not be set).
        """
        now = self.clock()
        if self._pass_wanted:
            return 0.0
        live = self._live()
        due = self._last_reconcile + (RECONCILE_EVERY if live or self.health.degraded
                                      else RECONCILE_IDLE)
        if self.health.degraded:
            due = min(due, self.health.next_try)
        if self.reg.held or not self._woken_by_gateway:
            due = min(due, self._last_pass + self.interval)
        wall = self.reg.clock()
        at = self.reg.earliest_expiry
        if self._running and at is not None:
            due = min(due, now + at + float(self.cfg.madre.backstop_grace) - wall)
        if self.win.live:
            due = min(due, now + min(self.win.live.values()) - wall)
        due = max(due, self._last_pass + self.interval)
        return max(0.0, due - now)

    async def start(self) -> None:
        self._migrate()
        fixed = self._reconcile()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sd.fileno(), self._on_bus)
        os.makedirs(os.path.dirname(self.wake_path), exist_ok=True)
        os.makedirs(self.reg.ends_dir, exist_ok=True)  # the hijas' memory probes write here
        self.sock, self._woken_by_gateway = bind_wake_socket(self.wake_path,
                                                             self.wake_group)
        self._loop.add_reader(self.sock.fileno(), self._on_wake)
        self.dirwatch = dirwatch.open_watch(os.path.dirname(os.path.abspath(self.db.path)))
        if self.dirwatch is not None:
            self._loop.add_reader(self.dirwatch.fileno(), self._on_dir)
        self._guard(self.reg.process_requests)
        self._refresh()
        self._pass_wanted = True  # the first timed pass at once: windows, backstop
        done = (textfmt.counts({k: v for k, v in fixed.items() if v}, "nothing to fix")
                if fixed is not None else "not yet")
        journal.event(log, "madre_started", "madre up: reconciled (%s), wake socket %s%s",
                      done, self.wake_path, f"; {self.health.text(0)}"
                      if self.health.degraded else "")

    def _migrate(self) -> None:
        """Apply pending migrations; a DB that cannot take them leaves madre degraded
        (it supervises what runs and retries), never a start that fails."""
        if not self.migrated:
            self.migrated = migrate(self.db, self.health, self.dbfile)

    def _reconcile(self) -> dict[str, int] | None:
        """Reconcile now if the DB can be read (counts by kind), else None (retried)."""
        fixed = self._guard(self.reg.reconcile)
        if fixed is None:
            self._last_reconcile = 0.0
            return None
        self._last_reconcile = self.clock()
        if self.reg.end_awaited():  # an end PID 1 has not logged yet: look again soon
            self._last_reconcile -= RECONCILE_EVERY - 2.0
        for k, v in fixed.items():
            self.m.reconcile.labels(k).inc(v)
        return fixed

    def _guard(self, fn, *args):  # type: ignore[no-untyped-def]
        """Run one step of a pass; a DB failure degrades madre instead of ending it."""
        try:
            return fn(*args)
        except DB_FAULTS as e:
            self.health.failed(e)
        except SystemdError as e:
            log.error("%s", e)
        return None

    def _on_dir(self) -> None:
        """The DB's directory changed: a deleted or replaced file is handled now."""
        assert self.dirwatch is not None
        self.dirwatch.drain()
        if self.dbfile.problem() is not None or self.health.degraded:
            self._pass_wanted = True
            self._poke()

    def _on_bus(self) -> None:
        self._check_file()
        try:
            self.reg.on_changes(self.sd.drain())
        except SystemdError as e:
            log.error("%s", e)
        except Exception:
            log.exception("handling unit changes failed")
        self._refresh()
        self._poke()

    def _on_wake(self) -> None:
        assert self.sock is not None
        n = 0
        new: list[str] = []
        with contextlib.suppress(BlockingIOError):
            while True:
                data, addr = self.sock.recvfrom(64)
                n += 1
                hid = hijas.parse_settle(data)
                if hid is None:  # a plain wake: a window or a stop may have changed too
                    self._pass_wanted = True
                if hid is not None and isinstance(addr, bytes) and addr.startswith(b"\0"):
                    self._waiters[hid] = addr
                    new.append(hid)
                    while len(self._waiters) > MAX_WAITERS:  # oldest first
                        self._waiters.pop(next(iter(self._waiters)))
        self.m.wakes.inc(n)
        self._check_file()
        self._check_space()
        self._work()
        if new:
            self._notify_settled(new)
        self._poke()

    def _notify_settled(self, ids: list[str]) -> None:
        """A burst's row may have been started by an earlier pass, before its settle
        request was read: whatever already settled is told now (the rest when it does)."""
        ids = [i for i in ids if i in self._waiters]
        for k in range(0, len(ids), 500):
            part = ids[k:k + 500]
            try:
                rows = self.db.query("SELECT id, status FROM spawner_hijas WHERE id IN "  # noqa: S608
                                     f"({','.join('?' * len(part))})", part)
            except Exception:
                log.exception("reading settled rows failed")
                return
            for r in rows:
                if r["status"] in SETTLED:
                    self._settled(r["id"], r["status"])

    def _settled(self, hija_id: str, status: str) -> None:
        """A row left requested/starting (committed): tell whoever waits for it."""
        addr = self._waiters.pop(hija_id, None)
        if addr is None or self.sock is None:
            return
        try:
            self.sock.sendto(hija_id.encode(), addr)
        except OSError as e:  # the waiter is gone or its queue is full: it re-reads the row
            log.debug("settle notice for %s to %r: %s", hija_id, addr, e)

    def _work(self) -> None:
        """One bounded batch of requests; the rest in a later loop pass, so a burst never
        holds the loop (and its watchdog pings) for long."""
        more = False
        try:
            more = self.reg.process_requests(limit=BATCH) == BATCH
            self.reg.on_changes(self.sd.drain())
        except DB_FAULTS as e:
            self.health.failed(e)
        except Exception:
            log.exception("processing requests failed")
        self._refresh()
        if more and self._loop is not None:
            self._loop.call_soon(self._work)

    async def tick(self) -> None:
        self._last_pass = self.clock()
        self._pass_wanted = False
        self._check_file()
        self._check_space()
        if self.health.degraded or self.reg.held:
            self._recover()
        self._work()  # requests a lost wake-up missed
        self._guard(self.reg.backstop)
        self._guard(self.win.tick)
        if not self.health.degraded and \
                self.clock() - self._last_reconcile >= (RECONCILE_EVERY if self._live()
                                                        else RECONCILE_IDLE):
            self._reconcile()
        self._refresh()

    def _check_space(self) -> None:
        """The free-space probe: a state filesystem under db.LOW_SPACE_BYTES free is
        ``disk_full`` now, before a write fails on it (tried again on the backoff)."""
        if self.health.cause not in (None, "disk_full") or not self.health.due():
            return
        full = low_space(self.db.path)
        if full is not None:
            self.health.failed(full, cause="disk_full")

    def _check_file(self) -> None:
        """A deleted or replaced DB file: stop writing (the writes would go to a file
        no other daemon sees), hold the transitions, and say so loudly."""
        problem = self.dbfile.problem()
        if problem is None or not self.health.writable or self.health.cause == "corrupt":
            return  # fine, or already known (a file that came back: _recover reopens it;
            # one found unsound stays `corrupt` until another is put there)
        self.health.failed(self.dbfile.error(problem), cause=problem)

    def _recover(self) -> None:
        """Retry (on the backoff schedule) what the DB refused: migrations, the held
        transitions, then a reconcile; a restored or re-created file is reopened."""
        if not self.health.due():
            return
        if self.health.cause == "read_only" and stale_read_only_view(self.db.path):
            raise StaleMountNamespace(
                f"{os.path.dirname(self.db.path)} is writable again, but madre's mount "
                "namespace (set up while it was read-only) still sees it read-only; "
                "exiting so systemd restarts madre in a fresh one (hija ends are re-read "
                "from the journal)")
        restore = False
        if self.health.cause in ("db_missing", "db_replaced"):
            if self.dbfile.problem() == "db_missing":  # still gone: next try on the backoff
                self.health.failed(self.dbfile.error("db_missing"), cause="db_missing")
                return
            self.db.close()  # the file at the path is back (or new): open that one
            self.migrated = False
            restore = True
        self._migrate()
        if not self.migrated:
            return
        if self.reg.flush(restore=restore) or not self.health.degraded:
            self._reconcile()

    def _refresh(self) -> None:
        summary = self._guard(self.reg.summary)
        if summary is not None:
            running, _ = summary
            # rows still `running` whose end madre holds (not recorded yet) ran out
            running = max(0, running - len({h.hija_id for h in self.reg.held
                                            if h.status in ENDED}))
            self.m.running.set(running)
            self._running = running
        else:
            self._running = None

    def status(self) -> str:
        """The STATUS line, its times counted from now (no DB read: the runtime asks
        after every pass and every watchdog ping)."""
        running = self._running
        if running is not None:
            text = f"{running} hija{'s' if running != 1 else ''} running"
            at = self.reg.earliest_expiry
            if running and at is not None:
                nxt = max(0.0, at - self.reg.clock())
                text += (f", next expiry in {textfmt.duration(math.ceil(nxt))}" if nxt >= 1
                         else ", next expiry due now")
        else:
            text = "hija records unreadable"
        extra = self.win.summary()
        if extra:
            text += f"; {extra}"
        if self.health.degraded or self.reg.held:
            text += "; " + (self.health.text(len(self.reg.held))
                            or f"{len(self.reg.held)} transitions pending")
        return text

    async def reload(self, cfg: Config) -> None:
        """New templates, limits and windows policy; the wake socket path stays."""
        self.cfg = self.reg.cfg = self.win.cfg = cfg
        self.m.known_templates(cfg)
        self.interval = float(cfg.madre.tick)

    async def stop(self) -> None:
        """Leave the hijas running: systemd enforces their TTL; reconcile adopts them."""
        if self._loop is not None:
            self._loop.remove_reader(self.sd.fileno())
        # Ends systemd signalled just before our SIGTERM (at shutdown the hijas stop
        # first, being ordered After=madre) are recorded now, not lost until next boot.
        try:
            self.reg.settle_before_exit()
        except (SystemdError, DbError) as e:
            log.error("could not record the hijas that ended at stop: %s", e)
            if self.sock is not None:
                self._loop.remove_reader(self.sock.fileno())
        if self.dirwatch is not None:
            if self._loop is not None:
                self._loop.remove_reader(self.dirwatch.fileno())
            self.dirwatch.close()
        if self.sock is not None:
            self.sock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.wake_path)
        self.sd.close()


