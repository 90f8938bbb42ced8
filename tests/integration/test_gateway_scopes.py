"""The scope matrix, built from docs/openapi.json, against a live gateway process.

Every documented operation x every scope x {valid, wrong, missing} credential gives
exactly what the document says: the valid credential of the operation's
``x-vx11-scope`` (or ``admin``) a documented answer that is not 401/403, any other
valid credential 403 ``forbidden`` naming the scope, a wrong or missing one 401; never
a 5xx the document does not list, never a 2xx out of scope. Then who asked is on the
record: the journal field, the hija row, the audit trail.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path

from vx11d import credentials

REPO = Path(__file__).resolve().parents[2]
DOC = json.loads((REPO / "docs" / "openapi.json").read_text())


def call(url: str, method: str, path: str, headers: dict[str, str],
         body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={**headers, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw, code = r.read(), r.status
    except urllib.error.HTTPError as e:
        raw, code = e.read(), e.code
    try:
        return code, json.loads(raw or b"{}")
    except ValueError:
        return code, {}


def operations() -> list[tuple[str, str, dict]]:
    return [(m.upper(), p, op) for p, ops in DOC["paths"].items() for m, op in ops.items()]


def request_for(method: str, path: str, hija: str) -> tuple[str, dict | None]:
    """A well-formed request for the operation (so an allowed one can succeed)."""
    bodies = {"/vx11/spawn": {"template": "sleeper", "ttl_s": 30},
              "/vx11/policy": {"component": "switch", "ttl_s": 60},
              "/vx11/route": {"query": "2+2"},
              "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}],
                                       "max_tokens": 4}}
    return path.replace("{id}", hija), bodies.get(path) if method == "POST" else None


def test_every_operation_scope_and_credential_gives_the_documented_answer(live_gateway):
    url, secret, log = live_gateway
    code, row = call(url, "POST", "/vx11/spawn", {"X-VX11-Token": secret["operate"]},
                     {"template": "sleeper", "ttl_s": 30})
    assert code in (201, 202), row
    hija = row["id"]
    wrong = secrets.token_urlsafe(32)
    checked = 0
    for method, path, op in operations():
        documented = set(op["responses"])
        need = op.get("x-vx11-scope")
        for scope in credentials.SCOPES:
            target, body = request_for(method, path, hija)
            for kind, headers in (("valid", {"X-VX11-Token": secret[scope]}),
                                  ("wrong", {"X-VX11-Token": wrong}),
                                  ("missing", {}),
                                  ("valid+wrong", {"X-VX11-Token": secret[scope],
                                                   "Authorization": f"Bearer {wrong}"})):
                code, out = call(url, method, target, headers, body)
                what = f"{method} {path} with a {kind} {scope} credential: {code} {out}"
                assert str(code) in documented, what
                assert code < 500 or str(code) in documented, what
                if need is None:  # /health: open; a wrong credential is still 401
                    assert code in ((200, 503) if kind in ("valid", "missing") else (401,)), what
                elif kind != "valid":
                    assert code == 401, what
                elif scope in (need, "admin"):
                    assert code not in (401, 403), what
                else:
                    assert code == 403, what
                    err = out["error"]
                    message = err["message"] if isinstance(err, dict) else out["message"]
                    assert need in message and f"fuzz-{scope}" in message, what
                checked += 1
    assert checked == len(operations()) * len(credentials.SCOPES) * 4

    # Who asked is on the record: the hija row, its API answer, the audit trail, the journal.
    code, row = call(url, "GET", f"/vx11/hijas/{hija}", {"X-VX11-Token": secret["read"]})
    assert code == 200 and row["requested_by"] == "fuzz-operate", row
    code, row = call(url, "DELETE", f"/vx11/hijas/{hija}", {"X-VX11-Token": secret["admin"]})
    assert code in (202, 409), row
    code, row = call(url, "GET", f"/vx11/hijas/{hija}", {"X-VX11-Token": secret["read"]})
    assert row["stop_requested_by"] == "fuzz-operate", row  # the first stop asked is kept
    db = sqlite3.connect(f"file:{log.parent / 'vx11.db'}?mode=ro", uri=True)
    try:
        events = db.execute("SELECT event, data FROM events WHERE event IN "
                            "('hija_requested', 'hija_stop_requested', "
                            "'activation_opened')").fetchall()
    finally:
        db.close()
    by = {(e, json.loads(d)["by"]) for e, d in events}
    assert ("hija_requested", "fuzz-operate") in by
    assert ("activation_opened", "fuzz-operate") in by and ("activation_opened",
                                                            "fuzz-admin") in by
    journal = log.read_text(errors="replace")
    assert "event=api_request" in journal and "credential=fuzz-operate" in journal
    assert "event=auth_forbidden" in journal and "credential=fuzz-read" in journal
    for s in secret.values():
        assert s not in journal
    assert "Traceback" not in journal
