"""Every shipped alert links to a runbook section that exists (docs/alerts.md)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PREFIX = "file:///usr/share/doc/vx11d/"


def alerts() -> list[dict]:
    out = []
    for f in sorted((REPO / "packaging" / "prometheus").glob("*.rules.yml")):
        for g in yaml.safe_load(f.read_text())["groups"]:
            out += [r for r in g["rules"] if "alert" in r]
    return out


def anchors(doc: Path) -> set[str]:
    """GitHub-style anchors of the doc's headings."""
    return {re.sub(r"[^a-z0-9 _-]", "", m.group(1).strip().lower()).replace(" ", "-")
            for m in re.finditer(r"^#+ (.+)$", doc.read_text(), re.M)}


def test_every_alert_has_a_runbook_url_to_an_existing_section():
    rules = alerts()
    assert len(rules) >= 20
    for r in rules:
        url = r["annotations"].get("runbook_url", "")
        assert url.startswith(PREFIX), f"{r['alert']}: runbook_url {url!r}"
        page, _, anchor = url.removeprefix(PREFIX).partition("#")
        doc = REPO / "docs" / page
        assert doc.exists(), f"{r['alert']}: {page} is not in docs/"
        assert anchor in anchors(doc), f"{r['alert']}: no section #{anchor} in docs/{page}"


def test_alert_names_are_unique():
    names = [r["alert"] for r in alerts()]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
