"""Text a person reads: ISO 8601 or relative times, durations with units, no reprs."""

from __future__ import annotations

import pytest

from vx11d import textfmt

NOW = 1_796_081_886.987424


def test_iso_and_relative():
    assert textfmt.iso(NOW) == "2026-11-30T23:38:06Z"
    assert textfmt.relative(NOW + 12.4, NOW) == "in 12s"
    assert textfmt.relative(NOW - 200, NOW) == "3m 20s ago"
    assert textfmt.when(NOW + 5, NOW) == "2026-11-30T23:38:11Z (in 5s)"
    assert textfmt.iso(None) == "-" and textfmt.relative(None) == "never"


@pytest.mark.parametrize(("s", "text"), [(0.25, "250ms"), (5, "5s"), (2.5, "2.5s"),
                                         (60, "1m"), (3725, "1h 2m"), (90000, "1d 1h")])
def test_duration(s, text):
    assert textfmt.duration(s) == text


def test_fields_read_like_systemd_without_reprs():
    """Regression: madre's journal said expires_at=1796081886.987424 and port None."""
    text = textfmt.fields({"main_pid": 42, "expires_at": NOW + 30, "port": None,
                           "reason": ""}, NOW)
    assert text == "main pid 42, expires at 2026-11-30T23:38:36Z (in 30s)"
    assert "None" not in text and "1796" not in text


def test_counts_and_size():
    assert textfmt.counts({"running": 2, "expired": 1}) == "1 expired, 2 running"
    assert textfmt.counts({}) == "none"
    assert textfmt.size(512) == "512 B" and textfmt.size(3 * 1024**3) == "3.0 GiB"
