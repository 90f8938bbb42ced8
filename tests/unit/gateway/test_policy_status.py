"""/health's per-daemon line for a timer (issue 24 item 12: it said ``"status": ""``)."""

from __future__ import annotations

from vx11d.gateway.policy import timer_status


def test_timer_status_was_empty_now_says_next_and_last_run():
    t = 1_796_601_600  # 2026-12-07T00:00:00Z
    assert timer_status({"NextElapseUSecRealtime": (t + 3600) * 10**6,
                         "LastTriggerUSec": t * 10**6}) == \
        "next 2026-12-07T01:00:00Z, last 2026-12-07T00:00:00Z"
    assert timer_status({"NextElapseUSecRealtime": 0, "LastTriggerUSec": 0}) == \
        "next not scheduled, last never"
    assert timer_status({}) == "next not scheduled, last never"


def test_timer_never_scheduled_is_uint64_max_over_dbus_not_a_crash():
    """Found by the bad-day test: an inactive timer's NextElapseUSecRealtime is
    UINT64_MAX over D-Bus, and /health's daemons part failed on it (year 586524)."""
    assert timer_status({"NextElapseUSecRealtime": 2**64 - 1, "LastTriggerUSec": 0}) == \
        "next not scheduled, last never"
