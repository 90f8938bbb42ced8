"""Hermes's RSS guard must act before the unit's MemoryHigh=/MemoryMax= (config check)."""

from __future__ import annotations

from pathlib import Path

from vx11d import config
from vx11d.ctl import hermeslimits

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_unit_and_default_config_keep_the_guard_first():
    limits = hermeslimits.from_unit_text((REPO / "units" / hermeslimits.UNIT).read_text())
    assert limits == {"MemoryHigh": 5800 * 1024**2, "MemoryMax": 6 * 1024**3}
    rss = int(config.load(str(REPO / "packaging" / "vx11.yml")).hermes.rss_limit)
    assert hermeslimits.problems(rss, limits) == []
    assert rss < limits["MemoryHigh"] < limits["MemoryMax"]


def test_a_guard_above_memory_max_or_high_is_refused_with_the_fix():
    bad = hermeslimits.problems(7 * 1024**3, {"MemoryHigh": 5800 * 1024**2,
                                              "MemoryMax": 6 * 1024**3})
    assert len(bad) == 2
    assert bad[0].startswith("hermes.rss_limit (7G) is not below vx11-hermes.service's "
                             "MemoryMax= (6G): the kernel would kill Hermes")
    assert "MemoryHigh= (5.7G)" in bad[1]
    assert hermeslimits.problems(1024**3, {"MemoryHigh": 3 * 1024**3,
                                           "MemoryMax": 2 * 1024**3}) == [
        "vx11-hermes.service: MemoryHigh= (3G) above MemoryMax= (2G) never applies"]
    assert hermeslimits.problems(1024**3, {"MemoryHigh": None, "MemoryMax": None}) == []


def test_unit_files_and_dropins_are_read_when_systemd_is_not_running(tmp_path):
    (tmp_path / hermeslimits.UNIT).write_text("[Service]\nMemoryMax=6G\nMemoryHigh=5800M\n")
    d = tmp_path / f"{hermeslimits.UNIT}.d"
    d.mkdir()
    (d / "size.conf").write_text("[Service]\nMemoryMax=2G\nMemoryHigh=infinity\n")
    got = hermeslimits.unit_memory((str(tmp_path),), ask_systemd=False)
    assert got == {"MemoryHigh": None, "MemoryMax": 2 * 1024**3}
    assert hermeslimits.unit_memory((str(tmp_path / "none"),), ask_systemd=False) is None
    assert hermeslimits.from_unit_text("MemoryMax=1.5G\n")["MemoryMax"] == int(1.5 * 1024**3)


def test_limits_read_from_dbus_properties_not_systemctl_show():
    """The unit's properties as D-Bus gives them (vx11d.units): bytes, infinity as
    UINT64_MAX."""
    got = hermeslimits.from_properties({"MemoryHigh": 5800 * 1024**2,
                                        "MemoryMax": 2**64 - 1, "LoadState": "loaded"})
    assert got == {"MemoryHigh": 5800 * 1024**2, "MemoryMax": None}
    assert hermeslimits.from_properties({}) == {"MemoryHigh": None, "MemoryMax": None}
