"""The state gauges the fleet alerts rest on, and the textfile mode node_exporter needs."""

from __future__ import annotations

import os
import shutil
import stat
import time

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from vx11d import metrics
from vx11d.db import Database
from vx11d.errors import ConfigError
from vx11d.gateway.auth import FailureLimiter
from vx11d.madre.streaks import FailedStreakCollector, streak

from .reaper.procfixture import BASE, FakeProc
from .reaper.test_reaper_daemon import service


def test_textfile_is_world_readable_whatever_the_umask(tmp_path):
    """Regression (vx11_rotate.prom was 0660 under the unit's UMask=0007): node_exporter
    runs as another user (prometheus) and must read it."""
    reg = CollectorRegistry()
    Gauge("vx11_x", "x", registry=reg).set(1)
    path = tmp_path / "vx11_rotate.prom"
    old = os.umask(0o077)
    try:
        metrics.write_textfile(reg, str(path))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert "vx11_x 1.0" in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["vx11_rotate.prom"]  # no temp left


def test_blocked_clients_counts_only_clients_refused_now():
    now = [0.0]
    lim = FailureLimiter(3, 60, clock=lambda: now[0])
    for _ in range(3):
        lim.failed("a")
    lim.failed("b")
    assert lim.blocked_clients() == 1
    now[0] = 61  # the window passed: the alert on this gauge resolves by itself
    assert lim.blocked_clients() == 0


def test_streak_counts_leading_failures():
    assert streak([]) == 0
    assert streak(["failed", "oom", "failed", "exited", "failed"]) == 3
    assert streak(["expired", "failed"]) == 0


def test_failed_streak_from_the_registry_resets_when_one_ends_well(dbpath):
    db = Database(dbpath)
    t = time.time()

    def end(i: int, template: str, status: str) -> None:
        db.write(lambda c: c.execute(
            "INSERT INTO spawner_hijas (id, template, ttl_s, unit, status, created_at, "
            "ended_at) VALUES (?, ?, 5, ?, ?, ?, ?)",
            (f"h{i}", template, f"vx11-hija-h{i}.service", status, t + i, t + i)))

    coll = FailedStreakCollector(Database(dbpath, readonly=True), lambda: ["echo", "web"])
    reg = CollectorRegistry()
    reg.register(coll)
    for i in range(4):
        end(i, "echo", "failed")
    end(4, "web", "exited")
    text = generate_latest(reg).decode()
    assert 'vx11_hijas_failed_streak{template="echo"} 4.0' in text
    assert 'vx11_hijas_failed_streak{template="web"} 0.0' in text
    end(5, "echo", "exited")
    assert 'vx11_hijas_failed_streak{template="echo"} 0.0' in generate_latest(reg).decode()


def test_failed_streak_is_absent_not_an_error_without_a_db(tmp_path):
    coll = FailedStreakCollector(Database(str(tmp_path / "none.db"), readonly=True),
                                 lambda: ["echo"])
    assert list(coll.collect()) == []


def test_breaker_open_gauge_follows_the_last_scan(tmp_path, dbpath):
    fp = FakeProc(tmp_path / "proc")
    for i in range(1, 4):
        fp.add(BASE + i, "junk", cgroup="/junk.slice/j.scope")
    svc, reg = service(fp, """
reaper:
  max_kills_per_scan: 0
  protected_units: []
  rules: [{name: junk, comm: "^junk$", action: terminate}]
""", db=Database(dbpath))
    svc.tick()
    assert "vx11_reaper_circuit_breaker_open 1.0" in generate_latest(reg).decode()
    for i in range(1, 4):  # the processes are gone: the next scan is within the limit
        shutil.rmtree(tmp_path / "proc" / str(BASE + i))
    svc.next_scan = 0.0
    svc.tick()
    assert "vx11_reaper_circuit_breaker_open 0.0" in generate_latest(reg).decode()


def test_metrics_address_not_on_this_host_is_a_config_error():
    """A fleet metrics_address copied to the wrong host: exit 78 with the key named, not a
    traceback (192.0.2.0/24 is documentation space, never a local address)."""
    with pytest.raises(ConfigError, match=r"metrics_address: 192\.0\.2\.77 is not an address"):
        metrics.serve(metrics.new_registry("test"), "192.0.2.77", 0)
