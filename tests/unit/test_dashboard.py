"""The Grafana dashboard is current and queries only metrics vx11d exports."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "packaging" / "grafana"


def _builder():
    spec = importlib.util.spec_from_file_location("build_dashboard",
                                                  GRAFANA / "build_dashboard.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_dashboard_is_the_generated_one():
    committed = json.loads((GRAFANA / "vx11.json").read_text())
    assert committed == _builder().build(), "run packaging/grafana/build_dashboard.py"


def test_every_queried_metric_is_exported_by_vx11d():
    dash = _builder().build()
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    names = {m for e in exprs for m in re.findall(r"\b(vx11_[a-z0-9_]+)", e)}
    source = "\n".join(p.read_text() for p in (REPO / "vx11d").rglob("*.py"))
    missing = []
    for name in sorted(names):
        base = re.sub(r"_(total|bucket|sum|count)$", "", name)
        if f'"{base}"' not in source and f'"{name}"' not in source:
            missing.append(name)
    assert not missing, f"dashboard queries metrics nobody exports: {missing}"
    assert len(dash["panels"]) > 20
