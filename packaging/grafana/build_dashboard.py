#!/usr/bin/env python3
"""Writes packaging/grafana/vx11.json, the vx11d Grafana dashboard (import it in Grafana).

The dashboard is generated so every panel has the same shape and a test can check that
each metric it queries is one vx11d exports. Run it after changing a panel:
    python packaging/grafana/build_dashboard.py
"""

from __future__ import annotations

import json
from pathlib import Path

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
SEL = 'instance=~"$instance"'

ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]], str]]]] = [
    ("Overview", [
        ("Daemons up", "stat", [('up{job=~"vx11-.*",' + SEL + "}", "{{job}}")], "none"),
        ("Restarts of Hermes (1h)", "stat",
         [(f"sum(increase(vx11_hermes_restarts_total{{{SEL}}}[1h]))", "restarts")], "none"),
    ]),
    ("Gateway (tentaculo_link)", [
        ("Requests/s by code", "timeseries",
         [(f"sum by (code) (rate(vx11_gateway_requests_total{{{SEL}}}[5m]))", "{{code}}")],
         "reqps"),
        ("Latency p99 by route", "timeseries",
         [("histogram_quantile(0.99, sum by (le, route) (rate("
           f"vx11_gateway_request_duration_seconds_bucket{{{SEL}}}[5m])))", "{{route}}")],
         "s"),
        ("Rejected tokens/s", "timeseries",
         [(f"sum by (reason) (rate(vx11_gateway_auth_failures_total{{{SEL}}}[5m]))",
           "{{reason}}")], "reqps"),
        ("Route answers/s by route", "timeseries",
         [(f"sum by (route) (rate(vx11_gateway_route_answers_total{{{SEL}}}[5m]))",
           "{{route}}")], "reqps"),
    ]),
    ("madre and hijas", [
        ("Hijas running", "timeseries", [(f"vx11_hijas_running{{{SEL}}}", "running")],
         "none"),
        ("Hijas ended/s by reason", "timeseries",
         [(f"sum by (reason) (rate(vx11_hijas_ended_total{{{SEL}}}[5m]))", "{{reason}}")],
         "ops"),
        ("Spawn latency p50 / p99", "timeseries",
         [("histogram_quantile(0.5, sum by (le) (rate("
           f"vx11_hija_spawn_duration_seconds_bucket{{{SEL}}}[5m])))", "p50"),
          ("histogram_quantile(0.99, sum by (le) (rate("
           f"vx11_hija_spawn_duration_seconds_bucket{{{SEL}}}[5m])))", "p99")], "s"),
        ("Live activation windows", "timeseries",
         [(f"vx11_activations_live{{{SEL}}}", "{{component}}")], "none"),
    ]),
    ("Reaper", [
        ("Zombies by rule", "timeseries",
         [(f"sum by (rule) (vx11_reaper_zombies{{{SEL}}})", "{{rule}}")], "none"),
        ("Orphans by rule", "timeseries",
         [(f"sum by (rule) (vx11_reaper_orphans{{{SEL}}})", "{{rule}}")], "none"),
        ("Signals sent/s", "timeseries",
         [(f"sum by (rule, signal) (rate(vx11_reaper_signals_total{{{SEL}}}[5m]))",
           "{{rule}} {{signal}}")], "ops"),
        ("Scan duration p99", "timeseries",
         [("histogram_quantile(0.99, sum by (le) (rate("
           f"vx11_reaper_scan_duration_seconds_bucket{{{SEL}}}[15m])))", "p99")], "s"),
    ]),
    ("Audit rotator", [
        ("Hours since last success", "stat",
         [(f"(time() - vx11_rotate_last_success_timestamp_seconds{{{SEL}}}) / 3600",
           "hours")], "h"),
        ("Dirs archived (last run)", "stat",
         [(f"vx11_rotate_dirs_archived{{{SEL}}}", "archived")], "none"),
        ("Bytes in / out (last run)", "timeseries",
         [(f"vx11_rotate_input_bytes{{{SEL}}}", "in"),
          (f"vx11_rotate_output_bytes{{{SEL}}}", "out")], "bytes"),
        ("Errors (last run)", "stat", [(f"vx11_rotate_errors{{{SEL}}}", "errors")], "none"),
    ]),
    ("Hermes", [
        ("Model loaded", "stat", [(f"vx11_hermes_model_loaded{{{SEL}}}", "loaded")], "none"),
        ("RSS vs guard", "timeseries",
         [(f"vx11_hermes_rss_bytes{{{SEL}}}", "rss"),
          (f"vx11_hermes_rss_limit_bytes{{{SEL}}}", "guard")], "bytes"),
        ("Request duration p99", "timeseries",
         [("histogram_quantile(0.99, sum by (le) (rate("
           f"vx11_hermes_request_duration_seconds_bucket{{{SEL}}}[5m])))", "p99")], "s"),
        ("Generated tokens/s", "timeseries",
         [(f"sum(rate(vx11_hermes_generated_tokens_total{{{SEL}}}[5m]))", "tokens/s")],
         "none"),
        ("Queue depth", "timeseries", [(f"vx11_hermes_queue_depth{{{SEL}}}", "queued")],
         "none"),
    ]),
]


def build() -> dict:
    panels, pid, y = [], 1, 0
    for title, row in ROWS:
        panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y = pid + 1, y + 1
        width = 24 // len(row)
        for i, (ptitle, kind, targets, unit) in enumerate(row):
            panels.append({
                "type": kind, "title": ptitle, "id": pid, "datasource": DS,
                "gridPos": {"h": 7, "w": width, "x": i * width, "y": y},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {},
                "targets": [{"refId": chr(65 + j), "datasource": DS, "expr": expr,
                             "legendFormat": legend} for j, (expr, legend) in enumerate(targets)],
            })
            pid += 1
        y += 7
    return {
        "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                      "pluginId": "prometheus", "pluginName": "Prometheus"}],
        "title": "vx11d", "uid": "vx11d", "tags": ["vx11"], "timezone": "utc",
        "schemaVersion": 39, "version": 1, "refresh": "30s", "editable": True,
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{
            "name": "instance", "type": "query", "datasource": DS, "multi": True,
            "includeAll": True, "refresh": 2, "label": "host",
            "query": {"query": "label_values(vx11_build_info, instance)", "refId": "I"},
            "definition": "label_values(vx11_build_info, instance)"}]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("vx11.json")
    out.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {out}")
