#!/usr/bin/env python3
"""Writes packaging/grafana/vx11.json, the vx11d fleet dashboard (import it in Grafana).

Built with Grafana's own dashboards-as-code library, grafana-foundation-sdk (typed
builders for the Grafana schema), from the table of panels below. Every query is per host
(`instance`, the host name in the shipped Prometheus config) and filtered by the
`$instance` variable, so the same panels show one host, several, or the fleet. Run it
after changing a panel (tests/unit/test_dashboard.py checks the JSON is current; the
fleet test runs every query against a live Prometheus and wants data from every host):

    .venv/bin/python packaging/grafana/build_dashboard.py
"""

from __future__ import annotations

import json
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

DS = DataSourceRef(type_val="prometheus", uid="${DS_PROMETHEUS}")
SEL = 'instance=~"$instance"'

# (row, [(title, kind, [(expr, legend)], unit)]): the operator's questions, row by row.
ROWS: list[tuple[str, list[tuple[str, str, list[tuple[str, str]], str]]]] = [
    ("What is running", [
        ("Daemons up", "stat",
         [(f'up{{job=~"vx11-.*|node",{SEL}}}', "{{instance}} {{job}}")], "none"),
        ("Hijas running", "timeseries",
         [(f"sum by (instance) (vx11_hijas_running{{{SEL}}})", "{{instance}}")], "none"),
        ("Next hija expiry", "stat",
         [(f"min by (instance) (vx11_hijas_next_expiry_seconds{{{SEL}}})", "{{instance}}")],
         "s"),
        ("Live activation windows", "timeseries",
         [(f"sum by (instance, component) (vx11_activations_live{{{SEL}}})",
           "{{instance}} {{component}}")], "none"),
    ]),
    ("What ended or was killed, and why", [
        ("Hijas ended/s by reason", "timeseries",
         [(f"sum by (instance, reason) (rate(vx11_hijas_ended_total{{{SEL}}}[5m]))",
           "{{instance}} {{reason}}")], "ops"),
        ("Failed in a row, by template", "timeseries",
         [(f"max by (instance, template) (vx11_hijas_failed_streak{{{SEL}}})",
           "{{instance}} {{template}}")], "none"),
        ("Reaper signals/s by rule", "timeseries",
         [(f"sum by (instance, rule, signal) (rate(vx11_reaper_signals_total{{{SEL}}}[5m]))",
           "{{instance}} {{rule}} {{signal}}")], "ops"),
        ("Reaper circuit breaker open", "stat",
         [(f"max by (instance) (vx11_reaper_circuit_breaker_open{{{SEL}}})",
           "{{instance}}")], "none"),
        ("Zombies", "timeseries",
         [(f"sum by (instance) (vx11_reaper_zombies{{{SEL}}})", "{{instance}}")], "none"),
    ]),
    ("Gateway (tentaculo_link)", [
        ("Requests/s by code", "timeseries",
         [(f"sum by (instance, code) (rate(vx11_gateway_requests_total{{{SEL}}}[5m]))",
           "{{instance}} {{code}}")], "reqps"),
        ("Latency p99", "timeseries",
         [("histogram_quantile(0.99, sum by (instance, le) (rate("
           f"vx11_gateway_request_duration_seconds_bucket{{{SEL}}}[5m])))", "{{instance}}")],
         "s"),
        ("Rejected tokens/s", "timeseries",
         [(f"sum by (instance) (rate(vx11_gateway_auth_failures_total{{{SEL}}}[5m]))",
           "{{instance}}")], "reqps"),
        ("Clients refused (brute-force limiter)", "stat",
         [(f"max by (instance) (vx11_gateway_auth_blocked_clients{{{SEL}}})",
           "{{instance}}")], "none"),
    ]),
    ("Audit rotation", [
        ("Since last successful rotation", "stat",
         [(f"time() - max by (instance) (vx11_rotate_last_success_timestamp_seconds{{{SEL}}})",
           "{{instance}}")], "s"),
        ("Errors in the last run", "stat",
         [(f"max by (instance) (vx11_rotate_errors{{{SEL}}})", "{{instance}}")], "none"),
        ("Dirs archived in the last run", "stat",
         [(f"max by (instance) (vx11_rotate_dirs_archived{{{SEL}}})", "{{instance}}")],
         "none"),
        ("Textfile readable by node_exporter", "stat",
         [(f"max by (instance) (node_textfile_scrape_error{{{SEL}}})", "{{instance}}")],
         "none"),
    ]),
    ("Hermes", [
        ("Model loaded", "stat",
         [(f"max by (instance) (vx11_hermes_model_loaded{{{SEL}}})", "{{instance}}")],
         "none"),
        ("RSS", "timeseries",
         [(f"max by (instance) (vx11_hermes_rss_bytes{{{SEL}}})", "{{instance}}")], "bytes"),
        ("Request duration p99", "timeseries",
         [("histogram_quantile(0.99, sum by (instance, le) (rate("
           f"vx11_hermes_request_duration_seconds_bucket{{{SEL}}}[5m])))", "{{instance}}")],
         "s"),
        ("Generated tokens (1h)", "stat",
         [(f"sum by (instance) (increase(vx11_hermes_generated_tokens_total{{{SEL}}}[1h]))",
           "{{instance}}")], "none"),
        ("Queue depth", "timeseries",
         [(f"max by (instance) (vx11_hermes_queue_depth{{{SEL}}})", "{{instance}}")],
         "none"),
        ("Generation and prompt tokens/s", "timeseries",
         [(f"sum by (instance) (rate(vx11_hermes_generated_tokens_total{{{SEL}}}[5m])) / "
           f"sum by (instance) (rate(vx11_hermes_generated_seconds_total{{{SEL}}}[5m]))",
           "{{instance}} generation"),
          (f"sum by (instance) (rate(vx11_hermes_prompt_tokens_total{{{SEL}}}[5m])) / "
           f"sum by (instance) (rate(vx11_hermes_prompt_seconds_total{{{SEL}}}[5m]))",
           "{{instance}} prompt")], "none"),
        ("Requests running", "timeseries",
         [(f"max by (instance) (vx11_hermes_requests_running{{{SEL}}})", "{{instance}}")],
         "none"),
        ("KV cache cells used", "timeseries",
         [(f"max by (instance) (vx11_hermes_kv_cache_used_cells{{{SEL}}}) / "
           f"max by (instance) (vx11_hermes_kv_cache_cells{{{SEL}}})", "{{instance}}")],
         "percentunit"),
    ]),
    ("Pressure (cgroup v2 PSI)", [
        ("Stalled on memory (share of time, all tasks)", "timeseries",
         [("sum by (instance, unit) (rate(vx11_pressure_stalled_seconds_total"
           f'{{resource="memory",{SEL}}}[5m]))', "{{instance}} {{unit}}")], "percentunit"),
        ("Waiting for CPU (share of time, some task)", "timeseries",
         [("sum by (instance, unit) (rate(vx11_pressure_waiting_seconds_total"
           f'{{resource="cpu",{SEL}}}[5m]))', "{{instance}} {{unit}}")], "percentunit"),
        ("Waiting for I/O (share of time, some task)", "timeseries",
         [("sum by (instance, unit) (rate(vx11_pressure_waiting_seconds_total"
           f'{{resource="io",{SEL}}}[5m]))', "{{instance}} {{unit}}")], "percentunit"),
    ]),
]


def _panel(pid: int, title: str, kind: str, targets: list[tuple[str, str]], unit: str,
           width: int):
    p = (stat.Panel() if kind == "stat" else timeseries.Panel()).id(pid).title(title)
    p = p.datasource(DS).unit(unit).height(7).span(width)
    for i, (expr, legend) in enumerate(targets):
        p = p.with_target(prometheus.Dataquery().ref_id(chr(65 + i)).expr(expr)
                          .legend_format(legend))
    return p


def build() -> dict:
    """The dashboard as a JSON-ready dict."""
    d = (dashboard.Dashboard("vx11d fleet").uid("vx11d").tags(["vx11"]).timezone("utc")
         .refresh("30s").time("now-6h", "now").editable()
         .with_variable(dashboard.QueryVariable("instance").label("host").datasource(DS)
                        .query("label_values(vx11_build_info, instance)")
                        .multi(True).include_all(True)
                        .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)))
    pid = 1
    for title, panels in ROWS:
        d = d.with_row(dashboard.Row(title).id(pid))
        pid += 1
        width = 24 // len(panels)
        for ptitle, kind, targets, unit in panels:
            d = d.with_panel(_panel(pid, ptitle, kind, targets, unit, width))
            pid += 1
    out = json.loads(json.dumps(d.build(), cls=JSONEncoder))
    for panel in out["panels"]:
        if panel.get("options", {}) is None:  # no option set: Grafana's defaults
            panel["options"] = {}
    out["__inputs"] = [{"name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource",
                        "pluginId": "prometheus", "pluginName": "Prometheus"}]
    return out


def queries(dash: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every query in the dashboard."""
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", [])]


if __name__ == "__main__":
    out = Path(__file__).with_name("vx11.json")
    out.write_text(json.dumps(build(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {out}")
