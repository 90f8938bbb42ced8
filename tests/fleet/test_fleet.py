"""Two vx11 hosts and a monitoring host, watched with the shipped configs.

Debian's Prometheus, Alertmanager, node_exporter and journal-remote/upload run for real
in booted containers on a private bridge (tests/fleet/harness.py). The tests run in file
order, sharing one fleet (about two minutes in all on 2 cores).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import yaml

from .harness import FLEET_MODEL, PKG, SCRAPE, Fleet, Host, poll

pytestmark = pytest.mark.fleet

DAEMON_JOBS = ("vx11-gateway", "vx11-madre", "vx11-reaper", "node")
# Alertmanager receives an alert at the rule evaluation after `for` has passed; on a loaded
# 2-core machine add this much for scheduling, the sandboxes and the API round trips.
SLACK = 15.0


def per_host(fleet: Fleet, expr: str) -> dict[str, float]:
    return {r["metric"].get("instance", ""): float(r["value"][1]) for r in fleet.query(expr)}


def test_every_host_scraped_with_the_shipped_config(fleet: Fleet):
    """Every job of the shipped prometheus.yml is up on every host, found through the
    targets file; the gateway's :9711 answered although no client but the Hermes relay
    scrape has reached :8000 (tests/system/test_fleet_faults_systemd.py shows it with
    none at all)."""
    names = {h.name for h in fleet.vx11}
    for job in DAEMON_JOBS:
        poll(lambda job=job: {i for i, v in per_host(fleet, f'up{{job="{job}"}}').items()
                              if v == 1} >= names, 90, f"up{{job={job}}} == 1 on every host")
    reqs = per_host(fleet, 'sum by (instance) '
                    '(vx11_gateway_requests_total{route!="/vx11/hermes/metrics"})')
    assert all(reqs.get(n, 0) == 0 for n in names), reqs
    # the Hermes relay is scraped over TLS with the `read` credential: 503 (Hermes is
    # not active), not 401 or 403; once each target has been scraped (health "unknown"
    # and no error until then)

    def hermes_targets() -> list[dict]:
        targets = fleet.api(9090, "/api/v1/targets")["data"]["activeTargets"]
        found = [t for t in targets if t["labels"]["job"] == "vx11-hermes"]
        scraped = {t["labels"]["instance"] for t in found if t["health"] != "unknown"}
        return found if scraped == names else []

    hermes = poll(hermes_targets, 60, "every host's Hermes relay scraped once")
    assert {t["labels"]["instance"] for t in hermes} == names
    assert all("503" in t["lastError"] for t in hermes), [t["lastError"] for t in hermes]


def test_prometheus_read_credential_over_tls_is_least_privilege(fleet: Fleet):
    """The credential Prometheus scrapes with (scope read, the same digest on every host,
    the secret only on the monitoring host) reads over TLS, and gets 403 on spawn, stop
    and policy; plain HTTP from the network is refused before any credential counts."""
    names = {h.name for h in fleet.vx11}
    assert names
    for h in fleet.vx11:
        auth = ["-H", f"Authorization: Bearer {fleet.read_secret}", "-w", "\n%{http_code}"]
        r = fleet.gateway(fleet.mon, h, "/vx11/hijas", *auth)
        assert r.stdout.endswith("\n200"), r.stdout + r.stderr
        for method, path, body in (("POST", "/vx11/spawn", '{"template": "sleeper"}'),
                                   ("DELETE", "/vx11/hijas/aaaaaaaaaa", ""),
                                   ("POST", "/vx11/policy", '{"component": "hermes"}')):
            r = fleet.gateway(fleet.mon, h, path, "-X", method, "-d", body, "-H",
                              "Content-Type: application/json", *auth)
            out, _, code = r.stdout.rpartition("\n")
            assert code == "403" and json.loads(out)["error"] == "forbidden", r.stdout
        r = fleet.mon.curl(f"http://{h.ip}:8000/health", "-w", "\n%{http_code}")
        assert not r.stdout.endswith("\n200"), r.stdout  # TLS port: no plain answer
        denied = h.run("journalctl", "VX11_EVENT=auth_forbidden", "VX11_CREDENTIAL=prometheus",
                       "-o", "cat", "--no-pager").stdout
        assert denied.count("lacks scope operate") >= 3, denied
        assert fleet.read_secret not in denied


def test_rotator_textfile_read_by_debian_node_exporter(fleet: Fleet):
    """Regression (vx11_rotate.prom was 0660 vx11:vx11): node_exporter, running as user
    prometheus from Debian's unit, reads it with no scrape error on every host."""
    for h in fleet.vx11:
        h.systemctl("start", "vx11-rotate.service")
        mode = h.run("stat", "-c", "%a %U", "/var/lib/prometheus/node-exporter/vx11_rotate.prom")
        assert mode.stdout.split() == ["644", "vx11"], mode.stdout
        user = h.systemctl("show", "-p", "User", "prometheus-node-exporter.service").stdout
        assert user.strip() == "User=prometheus"
    names = {h.name for h in fleet.vx11}
    poll(lambda: set(per_host(fleet, "vx11_rotate_last_success_timestamp_seconds")) >= names,
         60, "vx11_rotate_last_success_timestamp_seconds from every host")
    errors = per_host(fleet, "node_textfile_scrape_error")
    assert {n: errors.get(n) for n in names} == dict.fromkeys(names, 0.0), errors


# --- alerts ---------------------------------------------------------------------------

@dataclass
class Scenario:
    """A real failure on one host, the alerts it must raise, and the fix (applied once
    every one of them is in Alertmanager)."""

    alerts: tuple[str, ...]
    host: Host
    cause: Callable[[], None]
    fix: Callable[[], None]
    caused_at: float = 0.0
    fired_at: dict[str, float] = field(default_factory=dict)
    fixed_at: float | None = None
    resolved_at: float | None = None
    seen: dict = field(default_factory=dict)


def rule_for(alert: str) -> float:
    """The `for` of a shipped rule, in seconds."""
    for rules in PKG.joinpath("prometheus").glob("*.rules.yml"):
        for g in yaml.safe_load(rules.read_text())["groups"]:
            for r in g["rules"]:
                if r.get("alert") == alert:
                    f = r.get("for", "0s")
                    return float(f[:-1]) * {"s": 1, "m": 60, "h": 3600}[f[-1]]
    raise AssertionError(f"no shipped rule {alert}")


def spawn(h: Host, code: int) -> None:
    h.run("vx11ctl", "hijas", "spawn", "echo", "--ttl", "10s", "--arg", f"code={code}",
          "--arg", "word=fleet", timeout=60, check=False)  # exit 1 when the hija failed


def wait_ended(h: Host, n: int) -> None:
    def ended():
        out = json.loads(h.run("vx11ctl", "hijas", "list", "--json").stdout)
        rows = out if isinstance(out, list) else out.get("hijas", [])
        return sum(1 for r in rows if r.get("template") == "echo"
                   and r.get("status") in ("exited", "failed")) >= n
    poll(ended, 60, f"{n} echo hijas ended on {h.name}")


def test_alerts_fire_from_real_failures_and_resolve_after_the_fix(fleet: Fleet):
    a, b = fleet.vx11
    bad = "/var/lib/vx11/audit/20200101T000000Z"

    def rotate_cause():
        # The host's history: its last successful rotation was two days ago (as when the
        # timer was disabled), and the run now fails on an unreadable source.
        a.systemctl("start", "vx11-rotate.service")  # one success on record
        a.run("/opt/vx11d/bin/python", "-c",
              "import sqlite3; c=sqlite3.connect('/var/lib/vx11/vx11.db'); "
              "c.execute('UPDATE rotations SET started_at=started_at-2*86400, "
              "finished_at=finished_at-2*86400'); c.commit()")
        a.run("sh", "-c", f"mkdir -p {bad} && echo secret > {bad}/x && chmod 0600 {bad}/x "
              f"&& chown root:root {bad}/x")
        a.systemctl("start", "vx11-rotate.service", check=False)

    def rotate_fix():
        a.run("chown", "-R", "vx11:vx11", bad)
        r = a.systemctl("start", "vx11-rotate.service", check=False)
        assert r.returncode == 0, a.run("journalctl", "-u", "vx11-rotate", "-n", "15",
                                        "--no-pager").stdout

    def hijas_cause():
        for _ in range(3):
            spawn(a, 1)
        wait_ended(a, 3)

    def brute_force(h: Host = a):
        for _ in range(7):
            fleet.gateway(fleet.mon, h, "/vx11/hijas", "-H", "X-VX11-Token: wrong")

    inhibited: dict = {}

    def madre_fix():
        # While madre is down on b (critical), a warning on b is inhibited by the shipped
        # alertmanager.yml: Alertmanager holds it as suppressed, notifies nobody.
        brute_force(b)

        def suppressed():
            for x in fleet.am_alerts():
                if x["labels"]["alertname"] == "VX11GatewayAuthLimiterTripped" \
                        and x["labels"]["instance"] == b.name:
                    inhibited.update(x)  # the last state seen, for the assert below
                    return x["status"]["state"] == "suppressed"
            return False
        poll(suppressed, 30, "the limiter alert on b, suppressed, in Alertmanager")
        b.systemctl("start", "vx11-madre.service")

    def runaway_cause():
        a.run("ln", "-sf", "/usr/bin/sleep", "/var/tmp/vx11runaway")
        a.run("systemd-run", "--unit=fleet-runaway", "sh", "-c",
              "for i in $(seq 40); do /var/tmp/vx11runaway 600 & done; wait")

    scenarios = [
        Scenario(("VX11MadreDown",), b, lambda: b.systemctl("stop", "vx11-madre.service"),
                 madre_fix),
        Scenario(("VX11HijasFailing",), a, hijas_cause, lambda: spawn(a, 0)),
        Scenario(("VX11RotateErrors", "VX11RotateNoRecentSuccess"), a, rotate_cause,
                 rotate_fix),
        Scenario(("VX11ReaperCircuitBreakerOpen",), a, runaway_cause,
                 lambda: a.systemctl("stop", "fleet-runaway.service", check=False)),
        Scenario(("VX11GatewayAuthLimiterTripped",), a, brute_force, lambda: None),
    ]
    for s in scenarios:
        s.caused_at = time.monotonic()
        s.cause()
    for_s = {name: rule_for(name) for s in scenarios for name in s.alerts}
    everything: set[tuple[str, str | None]] = set()
    deadline = time.monotonic() + max(for_s.values()) + 120
    while time.monotonic() < deadline and any(s.resolved_at is None for s in scenarios):
        alerts = fleet.am_alerts()
        now = time.monotonic()
        everything |= {(x["labels"]["alertname"], x["labels"].get("instance"))
                       for x in alerts}
        for s in scenarios:
            mine = {x["labels"]["alertname"]: x for x in alerts
                    if x["labels"].get("alertname") in s.alerts
                    and x["labels"].get("instance") == s.host.name}
            for name, x in mine.items():
                if name not in s.fired_at:
                    s.fired_at[name], s.seen[name] = now, x
            if s.fixed_at is None and len(s.fired_at) == len(s.alerts):
                s.fix()
                s.fixed_at = time.monotonic()
            elif s.fixed_at is not None and s.resolved_at is None and not mine:
                s.resolved_at = now
        time.sleep(0.5)
    report = {name: {"host": s.host.name, "for_s": for_s[name],
                     "fired_after_s": round(s.fired_at[name] - s.caused_at, 1)
                     if name in s.fired_at else None,
                     "resolved_after_fix_s": round(s.resolved_at - s.fixed_at, 1)
                     if s.resolved_at and s.fixed_at else None}
              for s in scenarios for name in s.alerts}
    print("alert timings:", json.dumps(report, indent=1))
    for s in scenarios:
        for name in s.alerts:
            r = report[name]
            assert name in s.fired_at, f"{name} never reached Alertmanager: {report}"
            assert s.seen[name]["annotations"]["runbook_url"].startswith(
                "file:///usr/share/doc/vx11d/alerts.md#")
            assert s.seen[name]["status"]["state"] == "active", s.seen[name]
            assert r["fired_after_s"] <= for_s[name] + 2 * SCRAPE + SLACK, (name, report)
        assert s.resolved_at is not None, f"{s.alerts} still firing after the fix: {report}"
    # nothing else fired anywhere: no false alert from a healthy host or daemon
    expected = {(n, s.host.name) for s in scenarios for n in s.alerts}
    assert everything - expected - {("VX11GatewayAuthLimiterTripped", b.name)} == set()
    # the shipped route: critical to the pager receiver, the rest to tickets; inhibition
    for s in scenarios:
        for name, x in s.seen.items():
            want = "vx11-pager" if x["labels"]["severity"] == "critical" else "vx11-tickets"
            assert [r["name"] for r in x["receivers"]] == [want], (name, x["receivers"])
    assert inhibited["status"]["state"] == "suppressed", inhibited
    assert inhibited["status"]["inhibitedBy"], inhibited
    # the limiter resolves when its window (20s in this config) has passed
    assert report["VX11GatewayAuthLimiterTripped"]["resolved_after_fix_s"] <= 20 + 2 * SCRAPE \
        + SLACK, report


# --- logs -----------------------------------------------------------------------------

REMOTE = "/var/log/journal/remote"


def test_hija_expired_events_from_every_host_on_the_collector(fleet: Fleet):
    for h in fleet.vx11:
        h.run("vx11ctl", "hijas", "spawn", "sleeper", "--ttl", "2s")
    names = {h.name for h in fleet.vx11}

    def expired_hosts():
        r = fleet.mon.run("journalctl", f"--directory={REMOTE}", "VX11_EVENT=hija_expired",
                          "-o", "json", "--no-pager", check=False)
        return {json.loads(ln)["_HOSTNAME"] for ln in r.stdout.splitlines() if ln.strip()}
    poll(lambda: expired_hosts() >= names, 90, "hija_expired from every host on the collector")
    r = fleet.mon.run("vx11ctl", "logs", "--directory", REMOTE, "--event", "hija_expired",
                      "--json", "-n", "100")
    entries = [json.loads(ln) for ln in r.stdout.splitlines() if ln.strip()]
    assert {e["_HOSTNAME"] for e in entries} >= names, entries[-3:]
    assert all(e["VX11_EVENT"] == "hija_expired" for e in entries)


def test_no_token_in_any_forwarded_field(fleet: Fleet):
    a = fleet.vx11[0]
    # Requests that carry the token (good) and near-misses of it (bad), then every field
    # of every forwarded entry is searched for it.
    def auth_failed() -> int:
        return len(fleet.mon.run("journalctl", f"--directory={REMOTE}",
                                 "VX11_EVENT=auth_failed", "-o", "cat", "--no-pager",
                                 check=False).stdout.splitlines())
    before = auth_failed()
    fleet.gateway(fleet.mon, a, "/vx11/hijas", "-H", f"X-VX11-Token: {fleet.token}")
    fleet.gateway(fleet.mon, a, "/vx11/hijas", "-H", f"Authorization: Bearer {fleet.token}x")
    poll(lambda: auth_failed() > before, 60, "this auth_failed event on the collector")
    dump = fleet.mon.run("journalctl", f"--directory={REMOTE}", "-o", "export", "--no-pager",
                         timeout=120).stdout
    assert "VX11_EVENT=" in dump
    assert fleet.token not in dump
    assert fleet.token[:16] not in dump


# --- cardinality ------------------------------------------------------------------------

def series(h: Host, port: int) -> set[str]:
    """The series (name and labels) a daemon's /metrics exposes now."""
    r = h.curl(f"http://{h.ip}:{port}/metrics")
    assert r.returncode == 0, r.stderr
    return {ln.rsplit(" ", 1)[0] for ln in r.stdout.splitlines()
            if ln and not ln.startswith("#")}


ODD = ["PROPFIND", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "PURGE", "REPORT",
       "TRACE", "NOTIFY", "SUBSCRIBE"]


def test_series_count_flat_after_many_hijas(fleet: Fleet):
    """10 hijas, then 1,000 more come and go (rows in the registry, requests by id): every
    daemon's /metrics has the same series count."""
    h = fleet.vx11[1]
    hdr = ["-H", f"X-VX11-Token: {fleet.token}"]

    def traffic(ids: list[str]) -> None:
        for hid in ids:
            fleet.gateway(h, h, f"/vx11/hijas/{hid}", *hdr)
        fleet.gateway(h, h, "/vx11/hijas", *hdr)

    def odd_methods(methods: list[str]) -> None:
        # methods the HTTP parser knows but the API does not use: one "other" label
        for m in methods:
            fleet.gateway(h, h, "/vx11/hijas", "-X", m, *hdr)

    ids = []
    for _ in range(10):
        out = json.loads(h.run("vx11ctl", "hijas", "spawn", "echo", "--ttl", "5s",
                               "--json").stdout)
        ids.append(out.get("id") or out.get("hija", {}).get("id"))
    wait_ended(h, 10)
    traffic([*ids, "nosuchhija"])  # both phases see 200s and 404s (a bounded label set)
    odd_methods(ODD[:1])
    ports = {"gateway": 9711, "madre": 9712, "reaper": 9713}
    before = {d: series(h, p) for d, p in ports.items()}
    # 1,000 more hijas that came and went, as madre records them.
    h.run("/opt/vx11d/bin/python", "-c",
          "import sqlite3,time; c=sqlite3.connect('/var/lib/vx11/vx11.db'); t=time.time(); "
          "c.executemany(\"INSERT INTO spawner_hijas (id, template, ttl_s, unit, status, "
          "created_at, started_at, ended_at, exit_status, result) VALUES "
          "(?, 'echo', 5, ?, 'exited', ?, ?, ?, 0, 'success')\", "
          "[(f'bulk{i:04d}', f'vx11-hija-bulk{i:04d}.service', t, t, t+1) "
          "for i in range(1000)]); c.commit()")
    traffic([f"bulk{i:04d}" for i in range(0, 1000, 10)])
    odd_methods(ODD[1:])
    for _ in range(3):
        spawn(h, 0)
    wait_ended(h, 13)
    after = {d: series(h, p) for d, p in ports.items()}
    for d in ports:
        assert len(after[d]) == len(before[d]), (d, sorted(after[d] ^ before[d]))


# --- dashboard --------------------------------------------------------------------------

MODEL = FLEET_MODEL  # hermes.model_path in the fleet


def test_every_dashboard_panel_has_data_from_every_host(fleet: Fleet):
    """The shipped dashboard's queries, run against the live Prometheus with $instance set
    to each host in turn: no empty panel. Hermes runs (a tiny generated model, inside an
    activation window) so its row has data too."""
    import importlib.util

    from .harness import REPO

    for h in fleet.vx11:
        h.run("sh", "-c", f"/opt/vx11d/bin/python -m vx11d.hermes.testmodel {MODEL} && "
              f"chgrp vx11 {MODEL} && chmod 0640 {MODEL}")
        h.run("vx11ctl", "activate", "hermes", "--for", "30m")
    body = json.dumps({"model": "hermes", "max_tokens": 4,
                       "messages": [{"role": "user", "content": "hi"}]})
    for h in fleet.vx11:
        poll(lambda h=h: '"choices"' in fleet.gateway(
            fleet.mon, h, "/v1/chat/completions", "-H",
            f"Authorization: Bearer {fleet.token}", "-H", "Content-Type: application/json",
            "-d", body, timeout=30).stdout, 120, f"a chat answer from Hermes on {h.name}",
            interval=2)
    names = {h.name for h in fleet.vx11}
    poll(lambda: {i for i, v in per_host(fleet, 'up{job="vx11-hermes"}').items() if v == 1}
         >= names, 60, "the Hermes relay scraped on every host")
    spec = importlib.util.spec_from_file_location(
        "build_dashboard", REPO / "packaging" / "grafana" / "build_dashboard.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    committed = json.loads((REPO / "packaging" / "grafana" / "vx11.json").read_text())

    def empty() -> list[str]:
        return [f"{title} on {h.name}: {expr}" for title, expr in mod.queries(committed)
                for h in fleet.vx11 if not fleet.query(expr.replace("$instance", h.name))]
    # rate() and increase() need two scrapes of the Hermes relay: a few seconds at most
    last: list[str] = []
    deadline = time.monotonic() + 10 * SCRAPE
    while (last := empty()) and time.monotonic() < deadline:
        time.sleep(SCRAPE / 2)
    assert not last, "panels without data:\n" + "\n".join(last)
