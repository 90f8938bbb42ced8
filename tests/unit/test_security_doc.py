"""docs/security.md says what the code does: its scopes table is the one generated from
docs/openapi.json, and its drop-ins are the shipped ones."""

from __future__ import annotations

import json
import re
from pathlib import Path

from vx11d import credentials
from vx11d.gateway import openapi

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "security.md").read_text()


def test_scopes_table_is_generated_from_the_openapi_document():
    shipped = json.loads((REPO / "docs" / "openapi.json").read_text())
    table = DOC.split("<!-- scopes-table:begin -->\n", 1)[1].split(
        "<!-- scopes-table:end -->", 1)[0]
    assert table.strip() == openapi.scopes_table(shipped).strip(), \
        "regenerate: python -m vx11d.gateway.openapi --scopes-table"
    operations = sum(len(ops) for ops in shipped["paths"].values())
    rows = [r for r in table.splitlines() if r.startswith("| `")]
    assert len(rows) == operations
    for scope in credentials.SCOPES:
        assert f"| `{scope}` |" in DOC  # every scope explained in the scopes list


def test_every_operation_but_health_names_a_known_scope():
    doc = openapi.document()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path == "/health":
                assert "x-vx11-scope" not in op
            else:
                assert op["x-vx11-scope"] in credentials.SCOPES, (method, path)
                assert "403" in op["responses"], (method, path)


def _settings(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_the_drop_ins_in_the_doc_are_the_shipped_ones():
    blocks = re.findall(r"<<'END'\n(.*?)END\n", DOC, re.S)
    shipped = [REPO / "packaging" / "systemd" / "vx11-gateway.service.d" / "tls.conf",
               REPO / "packaging" / "systemd" / "vx11-gateway.socket.d" / "network.conf"]
    assert [_settings(b) for b in blocks] == [_settings(p.read_text()) for p in shipped]
