"""The life of a long-running daemon under systemd (Type=notify).

    starting --start() ok--> running --SIGTERM--> stopping --stop()--> stopped
                                |  ^
                           SIGHUP  reload() done (or refused: old config kept)
                                v  |
                             reloading

READY=1 is sent only after ``start()`` returned (the daemon can do its job);
``STATUS=`` whenever the status text changes; ``WATCHDOG=1`` after each pass of the
main loop, so a hung loop (or a SIGSTOP) stops the pings and systemd restarts the unit;
``STOPPING=1`` before ``stop()``. Signal handlers only set flags; the loop acts on them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import sdnotify

from .config import Config
from .config import load as load_config
from .errors import ConfigError

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("vx11.runtime")


class Notifier:
    """sd_notify messages to ``$NOTIFY_SOCKET`` (silently nothing when not under systemd)."""

    def __init__(self) -> None:
        self._n = sdnotify.SystemdNotifier()

    def send(self, msg: str) -> None:
        self._n.notify(msg)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={_one_line(status)}\nMAINPID={os.getpid()}")

    def status(self, text: str) -> None:
        self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def stopping(self, status: str = "stopping") -> None:
        self.send(f"STOPPING=1\nSTATUS={_one_line(status)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())[:512]


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between pings (half of WatchdogSec), or None when no watchdog is armed."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None


class Service(Protocol):
    """What a daemon gives the runtime. ``interval`` is the tick period in seconds."""

    component: str
    interval: float

    def start(self) -> None: ...
    def tick(self) -> None: ...
    def status(self) -> str: ...
    def reload(self, cfg: Config) -> None: ...
    def stop(self) -> None: ...


class Lifecycle:
    """The state machine and its notifications, shared by the sync and asyncio loops."""

    def __init__(self, notifier: Notifier, clock: Callable[[], float] = time.monotonic,
                 watchdog: float | None = None):
        self.n = notifier
        self.clock = clock
        self.watchdog = watchdog
        self.state = "starting"
        self.stop_requested = False
        self.reload_requested = False
        self._last_status = ""
        self._last_ping = float("-inf")

    def request_stop(self, *_: Any) -> None:
        self.stop_requested = True

    def request_reload(self, *_: Any) -> None:
        self.reload_requested = True

    def started(self, status: str) -> None:
        assert self.state == "starting", self.state
        self.state = "running"
        self._last_status = status
        self.n.ready(status)

    def progressed(self, status: str) -> bool:
        """One pass of the main loop finished: ping the watchdog (at most every half
        period: a loop that wakes often, like the reaper's, need not ping each time; the
        sleep is capped at the period, so pings stay under 1.5 periods apart, 0.75 of
        WatchdogSec), update STATUS."""
        pinged = False
        if self.watchdog is not None:
            now = self.clock()
            if now - self._last_ping >= self.watchdog / 2:
                self._last_ping = now
                self.n.watchdog()
                pinged = True
        if status != self._last_status:
            self._last_status = status
            self.n.status(status)
        return pinged

    def begin_reload(self) -> None:
        self.reload_requested = False
        self.state = "reloading"
        self.n.reloading()

    def end_reload(self, status: str) -> None:
        self.state = "running"
        self._last_status = status
        self.n.ready(status)

    def begin_stop(self, status: str = "stopping") -> None:
        self.state = "stopping"
        self.n.stopping(status)

    def stopped(self) -> None:
        self.state = "stopped"

    def wait_for(self, next_tick: float) -> float:
        """How long the loop may sleep: until the next tick, capped by the watchdog period."""
        delay = max(0.0, next_tick - self.clock())
        if self.watchdog is not None:
            delay = min(delay, self.watchdog)
        return delay


class _Waker:
    """A self-pipe the C-level signal wakeup writes to, so a sleeping loop wakes at once."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old = signal.set_wakeup_fd(self.w, warn_on_full_buffer=False)

    def sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``, or until a signal arrives."""
        if seconds <= 0:
            return
        # poll, not select: a daemon holding thousands of pidfds (the reaper) may have an
        # fd above FD_SETSIZE here.
        p = select.poll()
        p.register(self.r, select.POLLIN)
        try:
            ready = p.poll(seconds * 1000)
        except InterruptedError:
            return
        if ready:
            self.drain()

    def drain(self) -> None:
        try:
            while os.read(self.r, 512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        signal.set_wakeup_fd(self._old)
        os.close(self.r)
        os.close(self.w)


def _load_for_reload(config_path: str | None) -> Config | None:
    """The new config for a SIGHUP, or None (logged) when it does not load."""
    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        log.error("reload refused, keeping the running config: %s", e,
                  extra={"VX11_EVENT": "config_reload_refused"})
        return None
    log.info("config reloaded from %s", cfg.path, extra={"VX11_EVENT": "config_reloaded"})
    return cfg


def _reload(service: Any, life: Lifecycle, config_path: str | None) -> None:
    life.begin_reload()
    cfg = _load_for_reload(config_path)
    if cfg is not None:
        service.reload(cfg)
    life.end_reload(service.status())


def run(service: Service, *, notifier: Notifier | None = None,
        config_path: str | None = None) -> int:
    """Run a synchronous service until SIGTERM/SIGINT; returns the exit code."""
    life = Lifecycle(notifier or Notifier(), watchdog=watchdog_interval())
    signal.signal(signal.SIGTERM, life.request_stop)
    signal.signal(signal.SIGINT, life.request_stop)
    signal.signal(signal.SIGHUP, life.request_reload)
    waker = _Waker()
    try:
        service.start()
        life.started(service.status())
        next_tick = life.clock()
        while not life.stop_requested:
            if life.reload_requested:
                _reload(service, life, config_path)
            if life.clock() >= next_tick:
                service.tick()
                next_tick = life.clock() + service.interval
            life.progressed(service.status())
            if life.stop_requested or life.reload_requested:
                continue
            waker.sleep(life.wait_for(next_tick))
        life.begin_stop()
        service.stop()
        life.stopped()
        return 0
    finally:
        waker.close()


async def _wait(wake: asyncio.Event, timeout: float | None) -> None:
    """Sleep until ``wake`` is set or ``timeout`` seconds passed (None: no timeout)."""
    import asyncio
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), timeout=timeout)


async def run_async(service: Any, *, notifier: Notifier | None = None,
                    config_path: str | None = None, life: Lifecycle | None = None,
                    wait: Callable[[asyncio.Event, float | None], Any] = _wait) -> int:
    """Run an asyncio service (async start/tick/stop) until SIGTERM/SIGINT.

    A service with ``due_in()`` (seconds until its next tick is due, ``None``: nothing
    is due) is ticked only when that comes, not every ``interval``; its ``attach_waker``
    gets a callable that makes the loop look again at once (an event changed what is
    due). Between the two, the loop sleeps: nothing wakes it but a signal, the service,
    or the watchdog ping; a service's ``on_watchdog()`` runs at each ping (checks that
    need no wake of their own).
    """
    import asyncio  # here: the sync daemons (the reaper) need not load it (~2 MB)

    life = life or Lifecycle(notifier or Notifier(), watchdog=watchdog_interval())
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def on_signal(kind: str) -> None:
        if kind == "stop":
            life.request_stop()
        else:
            life.request_reload()
        wake.set()

    loop.add_signal_handler(signal.SIGTERM, on_signal, "stop")
    loop.add_signal_handler(signal.SIGINT, on_signal, "stop")
    loop.add_signal_handler(signal.SIGHUP, on_signal, "reload")
    due_in = getattr(service, "due_in", None)
    on_watchdog = getattr(service, "on_watchdog", None)
    if hasattr(service, "attach_waker"):
        service.attach_waker(wake.set)
    await service.start()
    life.started(service.status())
    next_tick = life.clock()
    while not life.stop_requested:
        if life.reload_requested:
            life.begin_reload()
            cfg = _load_for_reload(config_path)
            if cfg is not None:
                await service.reload(cfg)
            life.end_reload(service.status())
        if due_in is not None:
            d = due_in()
            next_tick = float("inf") if d is None else life.clock() + d
        if life.clock() >= next_tick:
            await service.tick()
            if due_in is None:
                next_tick = life.clock() + service.interval
            else:
                d = due_in()
                next_tick = float("inf") if d is None else life.clock() + d
        pinged = life.progressed(service.status())
        wake.clear()
        if pinged and on_watchdog is not None:
            on_watchdog()  # cheap checks riding on a wake the watchdog needs anyway
        if life.stop_requested or life.reload_requested:
            continue
        delay = life.wait_for(next_tick)
        await wait(wake, None if delay == float("inf") else delay)
    life.begin_stop()
    await service.stop()
    life.stopped()
    return 0
