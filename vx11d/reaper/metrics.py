"""The reaper's Prometheus metrics (label values: rule names from config, signal names,
a fixed set of outcomes; never a pid)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OUTCOMES = ("observed", "sigterm_sent", "sigchld_sent", "sigkill_sent", "exited_after_sigterm",
            "exited_after_sigkill", "survived_sigkill", "vanished", "pid_reused", "exited",
            "refused", "circuit_open", "abandoned", "enforcement_stopped")
SIGNALS = ("SIGCHLD", "SIGTERM", "SIGKILL")


class ReaperMetrics:
    """Every metric the reaper exports, registered on the registry passed in."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.scanned = Gauge("vx11_reaper_processes_scanned",
                             "Processes seen in the last scan", registry=registry)
        self.zombies = Gauge("vx11_reaper_zombies", "Zombies in the last scan, by the rule "
                             "matching their parent (none: no rule)", ["rule"],
                             registry=registry)
        self.orphans = Gauge("vx11_reaper_orphans", "Orphaned processes a rule matched in "
                             "the last scan", ["rule"], registry=registry)
        self.matched = Gauge("vx11_reaper_matched_processes", "Processes a rule matched in "
                             "the last scan", ["rule"], registry=registry)
        self.signals = Counter("vx11_reaper_signals", "Signals sent through pidfds",
                               ["rule", "signal"], registry=registry)
        self.outcomes = Counter("vx11_reaper_outcomes", "Findings and action outcomes",
                                ["rule", "outcome"], registry=registry)
        self.scan_seconds = Histogram("vx11_reaper_scan_duration_seconds",
                                      "Time to read and evaluate the process table",
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                                               2.5, 5.0, 10.0), registry=registry)
        self.last_scan = Gauge("vx11_reaper_last_scan_timestamp_seconds",
                               "Unix time the last scan finished", registry=registry)
        self.breaker = Counter("vx11_reaper_circuit_breaker_trips",
                               "Scans that hit max_kills_per_scan", registry=registry)
        self.breaker_open = Gauge("vx11_reaper_circuit_breaker_open",
                                  "1 while the last scan hit max_kills_per_scan and left "
                                  "matching processes alone", registry=registry)
        self.hija_lookup_failures = Counter("vx11_reaper_hija_lookup_failures",
                                            "Scans that could not read hija records",
                                            registry=registry)
        self.records_dropped = Counter("vx11_reaper_records_dropped", "Records dropped "
                                       "because more than the bound were held while the "
                                       "DB refused writes", registry=registry)
        self.tracking = Gauge("vx11_reaper_event_tracking", "1 while processes are tracked "
                              "by pidfd events, 0 while polling (full scans)",
                              registry=registry)
        self.tracked = Gauge("vx11_reaper_tracked_processes", "Processes watched through a "
                             "pidfd for their exit", registry=registry)
        self.live_zombies = Gauge("vx11_reaper_zombie_processes", "Zombies known now "
                                  "(updated on exit events, between scans)",
                                  registry=registry)
        self.enforcement_stopped = Gauge(
            "vx11_reaper_enforcement_stopped", "1 while the circuit breaker has stopped "
            "enforcement (observe-only until `vx11ctl reaper rearm`)", registry=registry)
        self.breaker_stops = Counter("vx11_reaper_breaker_stops",
                                     "Times the circuit breaker stopped enforcement",
                                     registry=registry)
        self.pending = Gauge("vx11_reaper_terminations_pending",
                             "Processes sent SIGTERM and not yet gone", registry=registry)

    def set_rules(self, names: list[str]) -> None:
        """(Re)create the label sets for the configured rules, so they show as 0."""
        for g in (self.zombies, self.orphans, self.matched):
            g.clear()
            for n in ["none", *names]:
                g.labels(n).set(0)
        for n in names:
            for s in SIGNALS:
                self.signals.labels(n, s)
