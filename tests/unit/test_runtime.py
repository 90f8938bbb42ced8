"""The daemon lifecycle: READY only after start, STATUS on change, watchdog, reload, stop."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from vx11d import runtime


class FakeNotifier(runtime.Notifier):
    def __init__(self):
        self.sent = []

    def send(self, msg):
        self.sent.append(msg)


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_ready_sent_only_after_start_and_status_only_on_change():
    n = FakeNotifier()
    life = runtime.Lifecycle(n, clock=FakeClock(), watchdog=None)
    assert n.sent == [] and life.state == "starting"
    life.started("0 hijas")
    assert life.state == "running"
    assert n.sent[0].startswith("READY=1\nSTATUS=0 hijas")
    life.progressed("0 hijas")
    assert len(n.sent) == 1  # unchanged status, no watchdog armed: nothing sent
    life.progressed("1 hija")
    assert n.sent[-1] == "STATUS=1 hija"


def test_watchdog_pinged_when_armed_at_most_every_half_period():
    n = FakeNotifier()
    clock = FakeClock()
    life = runtime.Lifecycle(n, clock=clock, watchdog=1.0)
    life.started("x")
    life.progressed("x")
    assert n.sent.count("WATCHDOG=1") == 1
    clock.t += 0.2
    life.progressed("x")  # a busy loop: no second ping this soon
    assert n.sent.count("WATCHDOG=1") == 1
    clock.t += 0.3
    life.progressed("x")
    assert n.sent.count("WATCHDOG=1") == 2


def test_wait_is_capped_by_watchdog_period():
    clock = FakeClock()
    life = runtime.Lifecycle(FakeNotifier(), clock=clock, watchdog=1.5)
    assert life.wait_for(clock.t + 30) == 1.5
    assert life.wait_for(clock.t + 0.5) == 0.5
    assert life.wait_for(clock.t - 5) == 0.0
    nowd = runtime.Lifecycle(FakeNotifier(), clock=clock, watchdog=None)
    assert nowd.wait_for(clock.t + 30) == 30


def test_reload_and_stop_transitions():
    n = FakeNotifier()
    life = runtime.Lifecycle(n, clock=FakeClock())
    life.started("a")
    life.request_reload()
    life.begin_reload()
    assert life.state == "reloading" and not life.reload_requested
    assert n.sent[-1] == "RELOADING=1"
    life.end_reload("b")
    assert life.state == "running" and n.sent[-1].startswith("READY=1\nSTATUS=b")
    life.begin_stop()
    assert life.state == "stopping" and n.sent[-1].startswith("STOPPING=1")
    life.stopped()
    assert life.state == "stopped"


def test_started_twice_is_a_bug():
    life = runtime.Lifecycle(FakeNotifier())
    life.started("a")
    with pytest.raises(AssertionError):
        life.started("a")


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"WATCHDOG_USEC": "2000000"}, 1.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),
    ({"WATCHDOG_USEC": "junk"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
])
def test_watchdog_interval_from_env(env, expected):
    assert runtime.watchdog_interval(env) == expected


class Counting:
    component = "test"
    interval = 0.01

    def __init__(self, on_tick=None):
        self.events = []
        self.ticks = 0
        self.on_tick = on_tick

    def start(self):
        self.events.append("start")

    def tick(self):
        self.ticks += 1
        if self.on_tick:
            self.on_tick(self)

    def status(self):
        return f"{self.ticks} ticks"

    def reload(self, cfg):
        self.events.append(("reload", cfg.reaper.interval))

    def stop(self):
        self.events.append("stop")


def test_run_stops_on_real_sigterm_with_stopping_sent():
    n = FakeNotifier()

    def on_tick(s):
        if s.ticks == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    svc = Counting(on_tick)
    old = signal.getsignal(signal.SIGTERM)
    try:
        assert runtime.run(svc, notifier=n) == 0
    finally:
        signal.signal(signal.SIGTERM, old)
    assert svc.events == ["start", "stop"]
    assert svc.ticks == 3
    assert n.sent[0].startswith("READY=1")
    assert n.sent[-1].startswith("STOPPING=1")


def test_run_reloads_on_sighup_and_keeps_old_config_when_new_is_bad(tmp_path):
    cfgfile = tmp_path / "vx11.yml"
    cfgfile.write_text("reaper:\n  interval: 7s\n")
    n = FakeNotifier()

    def on_tick(s):
        if s.ticks == 2:
            os.kill(os.getpid(), signal.SIGHUP)
        elif s.ticks == 4:
            cfgfile.write_text("reaper:\n  interval: [\n")
            os.kill(os.getpid(), signal.SIGHUP)
        elif s.ticks == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    svc = Counting(on_tick)
    olds = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    try:
        runtime.run(svc, notifier=n, config_path=str(cfgfile))
    finally:
        for s, h in olds.items():
            signal.signal(s, h)
    assert svc.events == ["start", ("reload", 7.0), "stop"]  # the bad reload changed nothing
    assert n.sent.count("RELOADING=1") == 2


def test_sleeping_loop_wakes_at_once_on_signal():
    """A long tick interval must not delay a stop: the self-pipe wakes the loop."""
    svc = Counting()
    svc.interval = 3600
    timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    old = signal.getsignal(signal.SIGTERM)
    done = threading.Event()

    def check():
        assert done.wait(5), "run() did not return within 5 s of SIGTERM"

    timer.start()
    try:
        runtime.run(svc, notifier=FakeNotifier())
        done.set()
    finally:
        signal.signal(signal.SIGTERM, old)
        timer.cancel()
    check()
    assert svc.ticks == 1


class AsyncCounting(Counting):
    async def start(self):
        super().start()

    async def tick(self):
        super().tick()

    async def reload(self, cfg):
        super().reload(cfg)

    async def stop(self):
        super().stop()


def test_run_async_reloads_and_stops_on_real_signals(tmp_path):
    import asyncio

    cfgfile = tmp_path / "vx11.yml"
    cfgfile.write_text("reaper:\n  interval: 9s\n")
    n = FakeNotifier()

    def on_tick(s):
        if s.ticks == 2:
            os.kill(os.getpid(), signal.SIGHUP)
        elif s.ticks == 4:
            os.kill(os.getpid(), signal.SIGTERM)

    svc = AsyncCounting(on_tick)
    assert asyncio.run(runtime.run_async(svc, notifier=n, config_path=str(cfgfile))) == 0
    assert svc.events == ["start", ("reload", 9.0), "stop"]
    assert n.sent[0].startswith("READY=1") and n.sent[-1].startswith("STOPPING=1")
    assert "RELOADING=1" in n.sent


def test_status_changed_between_ticks_lagged_until_the_next_tick_now_sent_at_once():
    """Regression (issue 24 item 8): madre saw a hija's end on the bus and recorded it,
    but STATUS= went out only after its next tick, so `vx11ctl status` printed "1 hija
    running" beside the DB's "1 expired". A service's poke (attach_waker) now makes the
    loop send the new STATUS at once."""
    import asyncio

    n = FakeNotifier()

    class Svc:
        component, interval = "t", 60.0  # no tick would come for a minute

        def __init__(self):
            self.text, self.poke = "1 hija running", None

        def attach_waker(self, poke):
            self.poke = poke

        async def start(self):
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, self.ended)
            loop.call_later(0.3, os.kill, os.getpid(), signal.SIGTERM)

        def ended(self):  # an event callback between two ticks
            self.text = "0 hijas running"
            self.poke()

        async def tick(self):
            pass

        def status(self):
            return self.text

        async def stop(self):
            pass

    svc = Svc()
    assert asyncio.run(runtime.run_async(svc, notifier=n)) == 0
    assert "STATUS=0 hijas running" in n.sent, n.sent
    assert n.sent.index("STATUS=0 hijas running") < len(n.sent) - 1  # before STOPPING
