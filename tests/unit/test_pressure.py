"""PSI counters from cgroup files (fixture files in tmp_path, as on a v2 host)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from vx11d.pressure import PressureCollector, parse, unified_root

SOME_FULL = ("some avg10=1.50 avg60=0.40 avg300=0.10 total=2500000\n"
             "full avg10=0.00 avg60=0.00 avg300=0.00 total=750000\n")


def test_parse_takes_the_totals_in_seconds_and_ignores_the_averages():
    assert parse(SOME_FULL) == {"some": 2.5, "full": 0.75}
    assert parse("some avg10=0.00 avg60=0.00 avg300=0.00 total=12\n") == {"some": 12e-6}
    assert parse("garbage\nsome total=x\n") == {}


def test_counters_per_unit_and_resource_only_for_what_can_be_read(tmp_path):
    hijas = tmp_path / "vx11.slice" / "vx11-hijas.slice"
    hijas.mkdir(parents=True)
    (hijas / "memory.pressure").write_text(SOME_FULL)
    (hijas / "cpu.pressure").write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=1000\n")
    registry = CollectorRegistry()
    registry.register(PressureCollector(root=tmp_path))  # Hermes not running: no cgroup
    text = generate_latest(registry).decode()
    assert ('vx11_pressure_waiting_seconds_total{resource="memory",unit="vx11-hijas.slice"} '
            '2.5') in text
    assert ('vx11_pressure_stalled_seconds_total{resource="memory",unit="vx11-hijas.slice"} '
            '0.75') in text
    assert 'resource="cpu",unit="vx11-hijas.slice"} 0.001' in text
    assert "vx11-hermes.service" not in text and 'resource="io"' not in text
    assert "# TYPE vx11_pressure_waiting_seconds_total counter" in text


def test_the_unified_mount_is_found_on_pure_v2_and_on_hybrid_hosts(tmp_path):
    pure = tmp_path / "pure"
    pure.write_text("35 24 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n")
    hybrid = tmp_path / "hybrid"
    hybrid.write_text("34 24 0:29 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n"
                      "35 34 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
                      "36 34 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    v1only = tmp_path / "v1"
    v1only.write_text("36 34 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n")
    assert str(unified_root(str(pure))) == "/sys/fs/cgroup"
    assert str(unified_root(str(hybrid))) == "/sys/fs/cgroup/unified"
    assert unified_root(str(v1only)) is None
    assert unified_root(str(tmp_path / "missing")) is None
