"""Names: the timestamp in an audit dir's name is its age, against an injected clock."""

from __future__ import annotations

import pytest

from tests.rotate_support import NOW
from vx11d.rotator import names


@pytest.mark.parametrize("name", ["20260103T120000Z", "20260103T120000Z_smoke",
                                  "20260103T120000Z_a.b-c+d"])
def test_timestamp_names_parse(name):
    s = names.parse(name)
    assert s is not None and s.name == name
    assert s.age(NOW) == pytest.approx(17 * 86400)


@pytest.mark.parametrize("name", ["archive", "20260103T120000", "20260103T120000Z_",
                                  "20261399T120000Z", "20260103T250000Z", "x20260103T120000Z",
                                  "20260103T120000Z_bad name", "20260103T120000Z_a\nb",
                                  "20260103T120000Z.tar.gz", "", "SCORECARD.json"])
def test_other_names_are_not_timestamps(name):
    assert names.parse(name) is None


def test_age_uses_the_clock_given_not_now():
    s = names.parse("20260120T110000Z")
    assert s.age(NOW) == 3600
    assert s.age(NOW - 7200) == -3600  # future relative to that clock


def test_archive_names():
    assert names.archive_name("20260103T120000Z") == "20260103T120000Z.tar.gz"
    assert names.parse_archive("20260103T120000Z_x.tar.gz").name == "20260103T120000Z_x"
    assert names.parse_archive("20260103T120000Z.tar.gz.bad-1") is None
    assert names.is_temp(names.temp_name("20260103T120000Z"))


def test_printable_escapes_control_and_undecodable_bytes():
    weird = b"a\nb\xff".decode("utf-8", "surrogateescape")
    out = names.printable(weird)
    assert "\n" not in out and "\\n" in out and "\\xff" in out
