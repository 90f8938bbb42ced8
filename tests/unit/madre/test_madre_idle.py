"""madre sleeps until the next thing due or an event, not on a clock (issue 25).

The loop is the real ``runtime.run_async`` with madre's real service, a real DB and the
fake systemd adapter; time is a fake clock that the injected wait advances by exactly
the timeout the loop asked for, so the count of wakeups is the loop's own decision,
not a timing measurement.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import os
import time

import pytest
from prometheus_client import CollectorRegistry

from tests.fake_systemd import FakeSystemd
from vx11d import config, hijas, runtime
from vx11d.db import Database
from vx11d.madre.daemon import RECONCILE_IDLE, MadreService

CFG = """
madre:
  backstop_grace: 2s
  templates:
    sleeper: {command: [/usr/bin/sleep, infinity], max_ttl: 600s}
"""


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Notifier(runtime.Notifier):
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, msg: str) -> None:
        self.sent.append(msg)


@pytest.fixture
def madre(dbpath, tmp_path):
    cfg = config.parse(CFG, "t.yml")
    db = Database(dbpath)
    sd = FakeSystemd()
    clock = Clock()
    s = MadreService(cfg, db, sd, CollectorRegistry(), wake_path=str(tmp_path / "wake.sock"),
                     clock=clock, wake_group=grp.getgrgid(os.getgid()).gr_name)
    s.fake_clock = clock
    yield s
    with contextlib.suppress(OSError):  # madre's stop closed it already
        sd.close()
    db.close()


def run_for(s: MadreService, seconds: float, *, between=None) -> tuple[list, int]:
    """Run madre's loop for ``seconds`` of fake time: (the waits it asked for, passes)."""
    clock = s.fake_clock
    life = runtime.Lifecycle(Notifier(), clock=clock, watchdog=None)
    end = clock.t + seconds
    waits: list[float | None] = []
    passes = 0
    real_tick = s.tick

    async def counted_tick() -> None:
        nonlocal passes
        passes += 1
        await real_tick()

    s.tick = counted_tick  # type: ignore[method-assign]

    async def wait(wake: asyncio.Event, timeout: float | None) -> None:
        waits.append(timeout)
        if between is not None:
            between(clock.t)
        if timeout is None or clock.t + timeout >= end:
            clock.t = end
            life.request_stop()
        else:
            clock.t += timeout

    assert asyncio.run(runtime.run_async(s, life=life, wait=wait)) == 0
    return waits, passes


def test_madre_with_no_hijas_makes_no_wakeup_for_a_minute(madre):
    waits, passes = run_for(madre, 60.0)
    # the one pass right after start, then a single sleep past the minute
    assert passes == 1, (passes, waits)
    assert len(waits) == 1 and waits[0] is not None and waits[0] >= 60.0, waits
    assert waits[0] == pytest.approx(RECONCILE_IDLE, abs=1.0)


def test_a_running_hija_wakes_madre_at_its_backstop_not_every_second(madre):
    asyncio.run(madre.start())
    asyncio.run(madre.tick())
    row = hijas.request_spawn(madre.db, madre.cfg, "sleeper", 10, {}, "test")
    madre.reg.process_requests()
    madre.reg.on_changes(madre.sd.drain())
    assert hijas.get(madre.db, row["id"])["status"] == "running"
    madre._refresh()
    due = madre.due_in()
    # expires_at (10 s) + backstop_grace (2 s), on the real wall clock the row carries
    assert 11.0 <= due <= 12.5, due
    madre.fake_clock.t += due
    later = time.time() + due + 0.01
    madre.reg.clock = lambda: later  # the backstop compares the row's wall-clock expiry
    asyncio.run(madre.tick())
    assert ("stop", row["unit"]) in madre.sd.calls, madre.sd.calls


def test_a_plain_wake_asks_for_a_pass_now(madre):
    asyncio.run(madre.start())
    assert madre.due_in() == 0.0  # the first pass right after start
    asyncio.run(madre.tick())
    madre.fake_clock.t += 10  # past the tick spacing
    assert madre.due_in() > 60
    pokes = []
    madre.attach_waker(lambda: pokes.append(1))
    hijas.wake_madre(madre.wake_path)  # what `vx11ctl activate` and the policy POST send
    madre._on_wake()
    assert madre.due_in() == 0.0 and pokes
    asyncio.run(madre.tick())
    assert madre.due_in() > 60


def test_a_deleted_db_file_is_noticed_by_the_directory_watch(madre):
    asyncio.run(madre.start())
    asyncio.run(madre.tick())
    assert madre.dirwatch is not None
    madre.fake_clock.t += 10
    pokes = []
    madre.attach_waker(lambda: pokes.append(1))
    os.unlink(madre.db.path)
    madre._on_dir()
    assert pokes and madre.due_in() == 0.0
    asyncio.run(madre.tick())
    assert madre.health.cause == "db_missing"


def test_a_full_disk_is_seen_at_the_watchdog_ping_without_a_wake_of_its_own(madre,
                                                                            monkeypatch):
    """The free-space probe rides on the watchdog ping: idle madre still says so."""
    from vx11d.db import DbFull
    from vx11d.madre import daemon

    asyncio.run(madre.start())
    asyncio.run(madre.tick())
    pokes = []
    madre.attach_waker(lambda: pokes.append(1))
    madre.on_watchdog()
    assert not pokes and madre.health.cause is None  # nothing changed: nothing to do
    monkeypatch.setattr(daemon, "low_space", lambda path: DbFull(f"{path}: full"))
    madre.on_watchdog()
    assert madre.health.cause == "disk_full" and pokes
    assert "disk" in madre.status()


def test_a_wake_socket_the_gateway_cannot_use_keeps_madre_looking_every_tick(madre):
    """Without group vx11 on the wake socket only root can wake madre: the gateway's
    requests are then found by a pass every madre.tick, as the warning says."""
    asyncio.run(madre.start())
    asyncio.run(madre.tick())
    madre._woken_by_gateway = False
    assert madre.due_in() <= float(madre.cfg.madre.tick)
    madre._woken_by_gateway = True
    assert madre.due_in() > 60
