"""The reaper as a vx11d.runtime Service: scan on an interval, act by policy, show its work."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from typing import Any

from .. import journal, textfmt
from ..config import Config
from ..db import Database, low_space, record_event, stale_read_only_view
from ..degraded import DB_FAULTS, FILE_CAUSES, DbFileWatch, WriteHealth, migrate
from ..errors import StaleMountNamespace
from .breaker import Breaker, Trip
from .kill import Pending, Terminator, open_verified, send
from .metrics import ReaperMetrics
from .proc import HZ, CgroupCache, Snapshot, read_cgroup, scan
from .rules import HIJA_RULE, Evaluator, Finding, HijaLookup, Report
from .track import Tracker, fd_budget

COMPONENT = "reaper"
MAX_HELD = 10_000  # records held while the DB refuses writes (the oldest go first)
PRUNE_SLACK = 1.25  # the cgroup cache is pruned when it outgrows the table by this much
RETRACK_SHARE = 0.8  # polling goes back to events when the table is below this share
QUIET_AFTER_S = 10.0  # no PID handed out and no exit for this long: the host is quiet...
QUIET_CHECK_FACTOR = 4  # ...and new PIDs are looked for this much less often (2 s)
log = logging.getLogger("vx11.reaper")


def db_hija_lookup(db: Database) -> HijaLookup:
    """unit names -> (hija id, status) from spawner_hijas (absent: no row)."""

    def lookup(units: list[str]) -> dict[str, tuple[str, str | None]]:
        out: dict[str, tuple[str, str | None]] = {}
        for i in range(0, len(units), 400):
            chunk = units[i:i + 400]
            marks = ",".join("?" * len(chunk))
            for r in db.query(f"SELECT id, unit, status FROM spawner_hijas "  # noqa: S608
                              f"WHERE unit IN ({marks})", chunk):
                out[r["unit"]] = (r["id"], r["status"])
        return out

    return lookup


def build_evaluator(cfg: Config, proc_path: str, lookup: HijaLookup | None, *,
                    full_every: int = 1) -> Evaluator:
    """The rule evaluator for this process (its own pid and cgroup are never touched)."""
    return Evaluator(cfg.reaper, self_pid=os.getpid(),
                     self_cgroup=read_cgroup(proc_path, os.getpid()),
                     cgroups=CgroupCache(proc_path), hija_lookup=lookup,
                     full_every=full_every)


def report_dict(rep: Report) -> dict[str, Any]:
    """A JSON-able view of one evaluation (what ``vx11ctl reaper scan`` prints)."""
    snap = rep.snapshot
    zp = []
    for ppid, zs in sorted(snap.zombies_by_parent.items(), key=lambda kv: -len(kv[1])):
        parent = snap.procs.get(ppid)
        zp.append({"parent_pid": ppid, "parent_comm": parent.comm if parent else None,
                   "zombies": len(zs), "zombie_pids": sorted(zs)[:50]})
    findings = [{"pid": f.proc.pid, "ppid": f.proc.ppid, "comm": f.proc.comm,
                 "uid": f.uid, "age_s": round(snap.age(f.proc), 1), "rule": f.rule,
                 "action": f.action, "event": f.event, "cgroup": f.cgroup,
                 "orphan": f.orphan, "zombies": f.zombies, "hija_id": f.hija_id}
                for f in rep.findings]
    return {"processes": len(snap.procs), "malformed": snap.malformed,
            "protected": rep.protected, "zombies": sum(len(z) for z in
                                                       snap.zombies_by_parent.values()),
            "zombie_parents": zp, "findings": findings,
            "zombies_by_rule": rep.zombies_by_rule, "orphans_by_rule": rep.orphans_by_rule,
            "hija_records_unavailable": rep.hija_lookup_failed}


class ReaperService:
    """Scans every ``cfg.reaper.interval`` seconds; TERM/KILL deadlines come in between."""

    component = COMPONENT

    def __init__(self, cfg: Config, db: Database | None, metrics: ReaperMetrics, *,
                 proc_path: str = "/proc", clock: Any = time.monotonic,
                 health: WriteHealth | None = None, breaker_file: str | None = None):
        self.proc_path = proc_path
        self.breaker = Breaker(cfg.reaper, breaker_file, clock)
        self.db = db
        self.m = metrics
        # records the DB refused: held (bounded) and written once it takes writes again
        self.health = health or WriteHealth("reaper", metrics.registry, log, clock=clock,
                                            path=db.path if db is not None else None)
        self.dbfile = DbFileWatch(db.path) if db is not None else None
        if db is not None:
            db.fault_log_level = logging.DEBUG  # self.health tells each fault and its end
        self.migrated = db is None
        self.clock = clock
        self.term = Terminator(clock)
        self.next_scan = 0.0
        self.report: Report | None = None
        self.signals_sent = 0
        self.scans = 0
        self._nudged: dict[tuple[int, int], float] = {}
        self._logged: dict[tuple[str, str, int, int], float] = {}
        self._rows: list[tuple[Any, ...]] = []
        self.tracker: Tracker | None = None
        self.next_probe = 0.0
        self.active_at = self.clock()  # the last check that saw a new PID or an exit
        self._next_flush = 0.0
        self._lookup_failing = False
        self._configure(cfg)

    def _configure(self, cfg: Config) -> None:
        self.cfg = cfg
        self.rc = cfg.reaper
        lookup = db_hija_lookup(self.db) if self.db is not None else None
        # decided again from scratch as often as the tracker re-reads every process
        self.evaluator = build_evaluator(cfg, self.proc_path, lookup,
                                         full_every=cfg.reaper.full_rescan_every)
        self.m.set_rules(self.evaluator.rule_names())
        self.breaker.configure(cfg.reaper)
        self.m.enforcement_stopped.set(1 if self.breaker.open else 0)
        if self._can_track():
            if self.tracker is None:
                self._track()
            else:
                self.tracker.full_every = cfg.reaper.full_rescan_every
        elif self.tracker is not None:
            self._untrack("configured: tracking poll")

    # --- event tracking -----------------------------------------------------------

    def _can_track(self) -> bool:
        """Events need this process's own procfs: pidfds name live PIDs, not a fixture
        tree's."""
        return self.rc.tracking == "events" and os.path.realpath(self.proc_path) == "/proc"

    def _track(self) -> None:
        self.tracker = Tracker(self.proc_path, full_every=self.rc.full_rescan_every)
        self.m.tracking.set(1)

    def _untrack(self, why: str) -> None:
        if self.tracker is not None:
            self.tracker.close()
        self.tracker = None
        self.m.tracking.set(0)
        self.m.tracked.set(0)
        journal.event(log, "reaper_polling", "process tracking off (%s): full scans every "
                      "%.0fs", why, self.rc.interval, level=logging.WARNING)

    def _track_tick(self, now: float) -> None:
        """Exit events and new PIDs, in one batch every ``new_process_check``: the loop
        does not wake per exit (under churn that would be a wake per process). Once no
        PID was handed out and nothing exited for ``QUIET_AFTER_S``, the check comes
        ``QUIET_CHECK_FACTOR`` times less often, until the next check that sees one: a
        host where nothing happens costs fewer wakeups, and a zombie born on it is seen
        within that longer period (2 s at the default) instead of 0.5 s."""
        t = self.tracker
        assert t is not None
        if now < self.next_probe:
            return
        before = t.last_pid
        t.check_new()  # first: a probed process that already exited fires at once
        if t.handle_events() or t.last_pid != before:
            self.active_at = now
        self.next_probe = now + self.probe_period(now)
        self.m.live_zombies.set(len(t.zombies))
        if t.overflow:
            self._untrack(f"more processes than {t.max_tracked} pidfds fit under the "
                          f"open-file limit (LimitNOFILE)")

    def probe_period(self, now: float) -> float:
        """Seconds to the next new-PID check: ``new_process_check``, longer on a quiet
        host."""
        period = self.rc.new_process_check
        if now - self.active_at >= QUIET_AFTER_S:
            period *= QUIET_CHECK_FACTOR
        return period

    # --- Service ------------------------------------------------------------------

    @property
    def interval(self) -> float:
        nxt = self.next_scan
        d = self.term.next_deadline()
        if d is not None:
            nxt = min(nxt, d)
        now = self.clock()
        if self.tracker is not None:
            nxt = min(nxt, self.next_probe)
        return max(0.01, nxt - now)

    def _migrate(self) -> None:
        if not self.migrated and self.db is not None:
            self.migrated = migrate(self.db, self.health, self.dbfile)

    def start(self) -> None:
        self._migrate()
        journal.event(log, "reaper_started", "reaper up: %d rules, interval %.1fs, "
                      "max %d kills per scan", len(self.rc.rules), self.rc.interval,
                      self.rc.max_kills_per_scan, pid=os.getpid())
        if self.breaker.trip is not None:
            journal.event(log, "reaper_enforcement_stopped", "enforcement stays stopped "
                          "(%s); observe-only until `vx11ctl reaper rearm`",
                          self.breaker.trip.reason, level=logging.ERROR,
                          rule=self.breaker.trip.rule or None)

    def tick(self) -> None:
        for pd, outcome, sig in self.term.poll():
            self._completed(pd, outcome, sig)
        if self.tracker is not None:
            self._track_tick(self.clock())
        if self.clock() >= self.next_scan:
            self.scan_and_act()
            self.next_scan = self.clock() + self.rc.interval
        self.m.pending.set(len(self.term.pending))
        now = self.clock()
        if self._rows or now >= self._next_flush:
            # The DB file check and a degraded DB's retry need not run on every
            # new-process probe (4 a second): once a second, or at once with records.
            self._next_flush = now + 1.0
            self._flush()

    def status(self) -> str:
        text = self._status()
        if self.breaker.trip is not None:
            return (f"ENFORCEMENT STOPPED: {self.breaker.trip.reason}; observe-only until "
                    f"`vx11ctl reaper rearm`; {text}")
        return text

    def _status(self) -> str:
        rep = self.report
        if rep is None:
            return "starting"
        a = f"{self.signals_sent} actions"
        if self.term.pending:
            a += f", {len(self.term.pending)} terminating"
        zp = rep.snapshot.zombies_by_parent
        total = sum(len(z) for z in zp.values())
        top = rep.top_zombie_parent()
        if top is None:
            text = f"0 zombies, {a}, {len(rep.snapshot.procs)} processes"
        elif len(zp) == 1:
            pid, n, comm = top
            text = f"{total} zombies under pid {pid} ({comm}), {a}"
        else:
            pid, n, comm = top
            text = (f"{total} zombies under {len(zp)} parents (most: {n} under pid {pid} "
                    f"({comm})), {a}")
        if self.health.degraded:
            text += "; " + self.health.text(len(self._rows), "record")
        return text

    def reload(self, cfg: Config) -> None:
        self._configure(cfg)
        self.next_scan = min(self.next_scan, self.clock() + cfg.reaper.interval)

    def stop(self) -> None:
        for pd in self.term.close():
            self._record(pd.finding, "abandoned", None)  # type: ignore[arg-type]
        self._flush()
        if self.tracker is not None:
            self.tracker.close()
        journal.event(log, "reaper_stopped", "reaper stopping", pid=os.getpid())

    # --- one scan -----------------------------------------------------------------

    def scan_and_act(self) -> Report:
        t0 = time.perf_counter()
        snap = self._snapshot()
        if len(self.evaluator.cgroups) > PRUNE_SLACK * len(snap.procs) + 64:
            self.evaluator.cgroups.prune(snap)  # entries of the processes gone since
        rep = self.evaluator.evaluate(snap)
        if self.tracker is not None:
            # The table may be minutes old for a process that exec'd since it was first
            # read: read what is about to be signalled again, and judge it again if it
            # changed.
            act = [f.proc.pid for f in rep.findings if f.action != "observe"]
            if act and self.tracker.reread(act):
                snap = self.tracker.snapshot()
                rep = self.evaluator.evaluate(snap)
        self.m.scan_seconds.observe(time.perf_counter() - t0)
        self.report = rep
        self.scans += 1
        self._export(rep)
        counts: dict[str, int] = {}
        for f in rep.findings:
            if f.action != "observe" and f.rule != HIJA_RULE:
                counts[f.rule] = counts.get(f.rule, 0) + 1
        trip = self.breaker.check_scan(counts, len(rep.snapshot.procs))
        if trip is not None:
            self._tripped(trip)
        self.act(rep)
        self._prune(rep)
        self.m.last_scan.set(time.time())
        return rep

    def _snapshot(self) -> Snapshot:
        """The process table: from the tracker, or a full scan while polling."""
        if self.tracker is not None:
            self.tracker.refresh()
            if not self.tracker.overflow:
                self.m.tracked.set(self.tracker.tracked_fds)
                return self.tracker.snapshot()
            self._untrack(f"more processes than {self.tracker.max_tracked} pidfds fit "
                          f"under the open-file limit (LimitNOFILE)")
        snap = scan(self.proc_path)
        if self._can_track() and len(snap.procs) < RETRACK_SHARE * fd_budget():
            self._track()
            journal.event(log, "reaper_tracking", "process tracking on again: %d processes",
                          len(snap.procs))
        return snap

    def _export(self, rep: Report) -> None:
        m = self.m
        m.scanned.set(len(rep.snapshot.procs))
        if self.tracker is None:
            m.live_zombies.set(sum(len(z) for z in rep.snapshot.zombies_by_parent.values()))
        for rule, n in rep.zombies_by_rule.items():
            m.zombies.labels(rule).set(n)
        for rule, n in rep.orphans_by_rule.items():
            m.orphans.labels(rule).set(n)
        matched: dict[str, int] = dict.fromkeys(rep.zombies_by_rule, 0)
        for f in rep.findings:
            matched[f.rule] = matched.get(f.rule, 0) + 1
        for rule, n in matched.items():
            m.matched.labels(rule).set(n)
        if rep.hija_lookup_failed and self.evaluator.hija_lookup is not None:
            m.hija_lookup_failures.inc()
            if not self._lookup_failing:  # once per spell, not every scan (the metric counts)
                journal.event(log, "hija_lookup_failed", "could not read hija records; hija "
                              "processes left alone until they can be read again",
                              level=logging.WARNING)
            self._lookup_failing = True
        elif self._lookup_failing and self.evaluator.hija_lookup is not None:
            self._lookup_failing = False
            journal.event(log, "hija_lookup_recovered", "hija records readable again")

    def _tripped(self, t: Trip) -> None:
        """Enforcement stops: say so everywhere, and abandon terminations in progress."""
        self.m.enforcement_stopped.set(1)
        self.m.breaker_stops.inc()
        journal.event(log, "reaper_enforcement_stopped", "circuit breaker: %s; enforcement "
                      "stopped, observe-only until `vx11ctl reaper rearm`", t.reason,
                      level=logging.ERROR, rule=t.rule or None)
        for pd in self.term.close():
            self._record(pd.finding, "abandoned", None)  # type: ignore[arg-type]

    def act(self, rep: Report) -> None:
        """Carry out a report's findings (signals go through verified pidfds only)."""
        budget = self.rc.max_kills_per_scan
        skipped = 0
        now = self.clock()
        for f in rep.findings:
            key = (f.proc.pid, f.proc.start)
            if self.term.busy(key):
                continue
            if f.action == "observe":
                self._observe(f, now)
                continue
            trip = self.breaker.allow(f.rule) if f.rule != HIJA_RULE else None
            if trip is not None:  # the window is full
                self._tripped(trip)
            if self.breaker.open:
                if self._due(("enforcement_stopped", f.rule, *key), now):
                    self._record(f, "enforcement_stopped", None, quiet=True)
                continue
            if budget <= 0:
                skipped += 1
                if self._due(("circuit_open", f.rule, *key), now):
                    self._record(f, "circuit_open", None, quiet=True)
                continue
            if f.action == "nudge":
                nudged = self._nudged.get(key)
                if nudged is None:
                    if self._signal_once(f, signal.SIGCHLD):
                        self._nudged[key] = now
                        budget -= 1
                        self.breaker.signalled()
                    continue
                f.event = "zombie_parent_terminated"
            if self._terminate(f):
                budget -= 1
                if f.rule != HIJA_RULE:
                    self.breaker.signalled()
        self.m.breaker_open.set(1 if skipped else 0)
        if skipped:
            self.m.breaker.inc()
            journal.event(log, "reaper_circuit_open", "max_kills_per_scan (%d) reached: "
                          "%d more processes left alone this scan", self.rc.max_kills_per_scan,
                          skipped, level=logging.WARNING, skipped=skipped)

    def _allowed(self, f: Finding):  # type: ignore[no-untyped-def]
        def check(cg: str | None) -> bool:
            return cg == f.cgroup and self.evaluator.still_allowed(f, cg)
        return check

    def _signal_once(self, f: Finding, sig: int) -> bool:
        v = open_verified(self.proc_path, f.proc.pid, f.proc.start, self._allowed(f))
        if v.fd is None:
            self._record(f, v.reason, None)
            return False
        try:
            sent = send(v.fd, sig)
        finally:
            os.close(v.fd)
        name = signal.Signals(sig).name
        if sent:
            self._sent(f, name)
        self._record(f, f"{name.lower()}_sent" if sent else "vanished", name if sent else None)
        return sent

    def _terminate(self, f: Finding) -> bool:
        v = open_verified(self.proc_path, f.proc.pid, f.proc.start, self._allowed(f))
        if v.fd is None:
            self._record(f, v.reason, None)
            return False
        if not self.term.begin(v.fd, (f.proc.pid, f.proc.start), f.grace, f):
            self._record(f, "vanished", None)
            return False
        self._sent(f, "SIGTERM")
        self._record(f, "sigterm_sent", "SIGTERM")
        return True

    def _sent(self, f: Finding, sig: str) -> None:
        self.signals_sent += 1
        self.m.signals.labels(f.rule, sig).inc()

    def _completed(self, pd: Pending, outcome: str, sig: str | None) -> None:
        f: Finding = pd.finding  # type: ignore[assignment]
        if sig:
            self._sent(f, sig)
        self._record(f, outcome, sig)

    def _observe(self, f: Finding, now: float) -> None:
        if self._due((f.event, f.rule, f.proc.pid, f.proc.start), now):
            self._record(f, "observed", None)

    def _due(self, key: tuple[str, str, int, int], now: float) -> bool:
        """Rate limit for repeated findings: once per ``observe_log_interval`` per process."""
        last = self._logged.get(key)
        if last is not None and now - last < self.rc.observe_log_interval:
            return False
        self._logged[key] = now
        return True

    def _prune(self, rep: Report) -> None:
        procs = rep.snapshot.procs

        def alive(pid: int, start: int) -> bool:
            p = procs.get(pid)
            return p is not None and p.start == start

        self._logged = {k: v for k, v in self._logged.items() if alive(k[2], k[3])}
        self._nudged = {k: v for k, v in self._nudged.items() if alive(*k)}

    # --- records ------------------------------------------------------------------

    def _record(self, f: Finding, outcome: str, sig: str | None, *, quiet: bool = False
                ) -> None:
        """One reaper_actions row + events row + journal entry for an action or finding."""
        p = f.proc
        self.m.outcomes.labels(f.rule, outcome).inc()
        level = logging.WARNING if outcome in ("survived_sigkill", "pid_reused") \
            else logging.INFO
        if not quiet:
            what = f"{f.zombies} zombies under " if f.zombies and f.action != "terminate" \
                else ""
            journal.event(log, f.event, "%s%s pid %d (%s) rule %s: %s%s", what,
                          "leaking parent" if f.zombies else "process", p.pid, p.comm,
                          f.rule, outcome, f" ({sig})" if sig else "", level=level,
                          pid=p.pid, comm=p.comm, rule=f.rule, signal=sig, outcome=outcome,
                          hija_id=f.hija_id, zombies=f.zombies or None)
        detail = {"ppid": p.ppid, "uid": f.uid, "state": p.state, "cgroup": f.cgroup,
                  "orphan": f.orphan, "zombies": f.zombies, "event": f.event,
                  "hija": f.hija_id}
        self._rows.append((time.time(), p.pid, p.start / HZ, p.comm, f.rule, f.action, sig,
                           outcome, f.hija_id if f.hija_row else None, detail, f.event))

    def _flush(self) -> None:
        if self.db is None:
            self._rows.clear()
            return
        self._check_file()
        if self.health.cause in (None, "disk_full") and self.health.due():
            full = low_space(self.db.path)  # the free-space probe: full before a write fails
            if full is not None:
                self.health.failed(full, cause="disk_full")
        if not self.health.due() or not self.health.writable:
            self._bound_held()
            return
        if self.health.degraded:
            if self.health.cause == "read_only" and stale_read_only_view(self.db.path):
                raise StaleMountNamespace(
                    f"{os.path.dirname(self.db.path)} is writable again, but the reaper's "
                    "mount namespace (set up while it was read-only) still sees it "
                    "read-only; exiting so systemd restarts it in a fresh one")
            self._migrate()
            if not self.migrated:
                return
        elif not self._rows:
            return
        rows, self._rows = self._rows, []
        cause = self.health.cause

        def write(conn: Any) -> None:
            for ts, pid, start, comm, rule, action, sig, outcome, hija, detail, ev in rows:
                # hija_id only if the row exists now (a restored DB may lack it)
                conn.execute(
                    "INSERT INTO reaper_actions (ts, pid, start_time, comm, rule, action, "
                    "signal, outcome, hija_id, detail) VALUES (?,?,?,?,?,?,?,?,"
                    "(SELECT id FROM spawner_hijas WHERE id = ?),?)",
                    (ts, pid, start, comm, rule, action, sig, outcome, hija,
                     json.dumps(detail, sort_keys=True)))
                record_event(conn, COMPONENT, ev, subject=f"hija:{hija}" if hija
                             else f"pid:{pid}", pid=pid, comm=comm, rule=rule, signal=sig,
                             outcome=outcome)
            if cause is not None:  # also the probe that ends degraded mode
                record_event(conn, COMPONENT, "reaper_db_recovered", cause=cause,
                             records=len(rows))

        try:
            self.db.write(write)
        except DB_FAULTS as e:
            self._rows[:0] = rows  # held, oldest first, for the next try
            self.health.failed(e)
            self._bound_held()
            return
        self.health.recovered(f"{textfmt.plural(len(rows), 'held record')} written"
                              if self.health.degraded and rows else "")

    def _check_file(self) -> None:
        """The DB file deleted or replaced: hold the records (a write would land in a
        file nobody else sees); the file back at the path is reopened and tried."""
        if self.dbfile is None or self.db is None:
            return
        problem = self.dbfile.problem()
        if problem is None:
            if self.health.cause in FILE_CAUSES and not self.health.file_back:
                # the file at the path is the one reopened: try it (adopting it is the
                # Database's job); with no record to write the try is the probe itself
                self.health.file_back = True
            return
        if self.health.cause == "corrupt":
            self.health.file_back = True  # the Database judges each new file itself
        elif self.health.writable and not self.health.file_back:
            self.health.failed(self.dbfile.error(problem), cause=problem)
        elif problem == "db_replaced":
            self.db.close()
            self.migrated = False
            self.dbfile.opened()
            self.health.file_back = True
            self.health.next_try = 0.0

    def _bound_held(self) -> None:
        over = len(self._rows) - MAX_HELD
        if over > 0:
            del self._rows[:over]
            self.m.records_dropped.inc(over)
            log.error("dropped the %d oldest reaper records held while the DB refuses "
                      "writes (more than %d); their journal entries remain", over, MAX_HELD,
                      extra={"VX11_EVENT": "reaper_records_dropped"})
