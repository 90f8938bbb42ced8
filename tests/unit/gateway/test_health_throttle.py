"""The tokenless /health throttle: a per-address token bucket with bounded memory."""

from __future__ import annotations

from vx11d.gateway import health


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_stranger_over_its_rate_is_slowed_others_are_not():
    clock = Clock()
    th = health.StrangerThrottle(rate=10, clock=clock)
    assert not any(th.over("10.0.0.1") for _ in range(20))  # the burst: twice the rate
    assert th.over("10.0.0.1")
    assert not th.over("10.0.0.2")
    clock.t += 0.5  # five tokens back
    assert [th.over("10.0.0.1") for _ in range(6)] == [False] * 5 + [True]


def test_memory_stays_bounded():
    th = health.StrangerThrottle(rate=10, clock=Clock())
    for i in range(health.MAX_TRACKED * 3):
        th.over(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(th._buckets) <= health.MAX_TRACKED
