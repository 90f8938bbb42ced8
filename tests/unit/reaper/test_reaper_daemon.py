"""The reaper service on fixture /proc trees: STATUS, records, rate limits, circuit breaker."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, generate_latest

from vx11d.db import Database
from vx11d.reaper.daemon import ReaperService, report_dict
from vx11d.reaper.metrics import ReaperMetrics

from .procfixture import BASE, FakeProc, cfg


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def service(fp: FakeProc, text: str, db=None, clock=None
            ) -> tuple[ReaperService, CollectorRegistry]:
    reg = CollectorRegistry()
    return ReaperService(cfg(text), db, ReaperMetrics(reg), proc_path=fp.path,
                         clock=clock or Clock()), reg


LEAKY = """
reaper:
  protected_units: ["init.scope"]
  observe_log_interval: 60
  rules: [{name: leaky, zombie_parent: true, min_zombies: 2}]
"""


def leaky_tree(tmp_path) -> FakeProc:
    fp = FakeProc(tmp_path / "proc")
    fp.add(1, "init", ppid=0, cgroup="/init.scope")
    fp.add(123, "leaky", cgroup="/system.slice/leaky.service")
    fp.add(BASE + 1, "z", ppid=123, state="Z")
    fp.add(BASE + 2, "z", ppid=123, state="Z")
    return fp


def test_status_names_the_zombie_parent(tmp_path):
    fp = leaky_tree(tmp_path)
    svc, _ = service(fp, LEAKY)
    assert svc.status() == "starting"
    svc.tick()
    assert svc.status() == "2 zombies under pid 123 (leaky), 0 actions"
    fp.add(BASE + 3, "other", cgroup="/x.slice/o.service")
    fp.add(BASE + 4, "z", ppid=BASE + 3, state="Z")
    svc.clock.t += 31
    svc.tick()
    assert svc.status() == ("3 zombies under 2 parents (most: 2 under pid 123 (leaky)), "
                            "0 actions")


def test_observe_findings_are_recorded_once_per_interval(tmp_path, dbpath):
    fp = leaky_tree(tmp_path)
    db = Database(dbpath)
    clock = Clock()
    svc, reg = service(fp, LEAKY.replace("observe_log_interval: 60",
                                         "observe_log_interval: 100\n  interval: 30"),
                       db=db, clock=clock)
    for _ in range(3):  # t = 1000, 1030, 1060: one record
        svc.tick()
        clock.t += 30
    rows = db.query("SELECT pid, comm, rule, action, signal, outcome, hija_id, detail "
                    "FROM reaper_actions")
    assert [tuple(r)[:7] for r in rows] == [(123, "leaky", "leaky", "observe", None,
                                             "observed", None)]
    assert json.loads(rows[0]["detail"])["zombies"] == 2
    ev = db.query("SELECT event, subject, data FROM events WHERE component='reaper'")
    assert [(e["event"], e["subject"]) for e in ev] == [("zombies_observed", "pid:123")]
    clock.t += 20  # 1110: 110 s after the first record
    svc.tick()
    assert len(db.query("SELECT 1 FROM reaper_actions")) == 2
    text = generate_latest(reg).decode()
    assert 'vx11_reaper_zombies{rule="leaky"} 2.0' in text
    assert 'vx11_reaper_outcomes_total{outcome="observed",rule="leaky"} 2.0' in text
    assert "vx11_reaper_processes_scanned 4.0" in text


def test_circuit_breaker_signals_nothing_beyond_max_kills(tmp_path, dbpath):
    fp = FakeProc(tmp_path / "proc")
    for i in range(1, 6):
        fp.add(BASE + i, "junk", cgroup="/junk.slice/j.scope")
    db = Database(dbpath)
    svc, reg = service(fp, """
reaper:
  max_kills_per_scan: 0
  protected_units: []
  rules: [{name: junk, comm: "^junk$", action: terminate}]
""", db=db)
    svc.tick()
    outcomes = [r[0] for r in db.query("SELECT outcome FROM reaper_actions")]
    assert outcomes == ["circuit_open"] * 5
    assert svc.signals_sent == 0
    assert "vx11_reaper_circuit_breaker_trips_total 1.0" in generate_latest(reg).decode()


def test_a_vanished_target_is_recorded_not_signalled(tmp_path, dbpath):
    # BASE pids are above PID_MAX_LIMIT: pidfd_open fails, as for a process gone since the scan.
    fp = FakeProc(tmp_path / "proc")
    fp.add(BASE + 1, "junk", cgroup="/junk.slice/j.scope")
    db = Database(dbpath)
    svc, _ = service(fp, """
reaper:
  protected_units: []
  rules: [{name: junk, comm: "^junk$", orphan: true, action: terminate}]
""", db=db)
    svc.tick()
    rows = db.query("SELECT rule, action, signal, outcome FROM reaper_actions")
    assert [tuple(r) for r in rows] == [("junk", "terminate", None, "vanished")]
    assert db.query("SELECT event FROM events")[0]["event"] == "orphan_terminated"
    assert svc.signals_sent == 0


def test_interval_is_the_time_to_the_next_scan(tmp_path):
    fp = leaky_tree(tmp_path)
    clock = Clock()
    svc, _ = service(fp, LEAKY + "  interval: 30\n", clock=clock)
    svc.tick()
    clock.t += 10
    assert abs(svc.interval - 20) < 1e-6


def test_scan_report_is_json_ready(tmp_path):
    fp = leaky_tree(tmp_path)
    svc, _ = service(fp, LEAKY)
    data = report_dict(svc.scan_and_act())
    json.dumps(data)
    assert data["zombie_parents"][0] == {"parent_pid": 123, "parent_comm": "leaky",
                                         "zombies": 2, "zombie_pids": [BASE + 1, BASE + 2]}
    assert data["findings"][0]["rule"] == "leaky"


def test_reaper_dropped_its_records_on_a_failed_write_now_holds_and_writes_them(
        tmp_path, dbpath):
    """Regression (issue 10): a reaper_actions write that failed (read-only state, full
    disk) was logged and the records thrown away; now they are held and written once
    the DB takes writes, and STATUS says so meanwhile."""
    fp = leaky_tree(tmp_path)
    db = Database(dbpath)
    clock = Clock()
    svc, reg = service(fp, LEAKY.replace("observe_log_interval: 60",
                                         "observe_log_interval: 100\n  interval: 30"),
                       db=db, clock=clock)
    db.conn.execute("PRAGMA query_only=1")  # every write now fails as on a read-only fs
    svc.tick()
    assert db.query("SELECT count(*) FROM reaper_actions")[0][0] == 0
    assert svc.status().endswith("degraded: state read-only, 1 record pending")
    assert 'vx11_reaper_degraded{cause="read_only"} 1.0' in generate_latest(reg).decode()
    db.conn.execute("PRAGMA query_only=0")
    clock.t += 30
    svc.tick()
    rows = db.query("SELECT pid, outcome FROM reaper_actions")
    assert [tuple(r) for r in rows] == [(123, "observed")]
    assert "degraded" not in svc.status()
    assert db.query("SELECT count(*) FROM events WHERE event = 'reaper_db_recovered'"
                    )[0][0] == 1


class QuietTracker:
    """A tracker whose host hands out a PID or has an exit only when told."""

    def __init__(self) -> None:
        self.last_pid = self.host_pid = 100  # what it saw; what the kernel handed out
        self.exits = 0
        self.zombies: set[int] = set()
        self.overflow = False
        self.checks = 0

    def check_new(self) -> int:
        self.checks += 1
        n, self.last_pid = self.host_pid - self.last_pid, self.host_pid
        return n

    def handle_events(self) -> int:
        n, self.exits = self.exits, 0
        return n


def test_a_quiet_host_is_checked_for_new_pids_less_often_until_one_comes(tmp_path):
    """Regression: the reaper woke every 0.5 s (2.2 wakeups a second) on a host where
    nothing forked or exited."""
    fp = leaky_tree(tmp_path)
    clock = Clock()
    svc, _ = service(fp, LEAKY + "  interval: 30\n  new_process_check: 0.5\n", clock=clock)
    t = svc.tracker = QuietTracker()
    svc.next_scan = float("inf")  # the full scans (every 30 s) are not what is counted

    def run_for(seconds: float) -> list[float]:
        """Tick at each wake the service asks for; the gaps between the checks."""
        gaps, last, end = [], clock.t, clock.t + seconds
        while clock.t < end:
            clock.t += svc.interval
            before = t.checks
            svc.tick()
            if t.checks > before:
                gaps.append(round(clock.t - last, 3))
                last = clock.t
        return gaps

    svc.tick()  # the first check, at once
    gaps = run_for(60)
    assert gaps[:3] == [0.5, 0.5, 0.5]  # busy until proven quiet
    assert set(gaps[-5:]) == {2.0}, gaps  # quiet: 4x less often
    assert len(gaps) < 60 / 0.5 / 2
    t.host_pid += 3  # a fork on the quiet host: seen at the next (2 s) check...
    gaps = run_for(3)
    assert gaps[0] == 2.0 and gaps[1:] and set(gaps[1:]) == {0.5}, gaps  # ...then busy
    clock.t += 20
    svc.tick()
    t.exits = 1  # an exit counts as activity too
    gaps = run_for(3)
    assert gaps[0] == 2.0 and set(gaps[1:]) == {0.5}, gaps
