"""Named credentials at rest: vx11ctl token add|list|revoke and the file format."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from vx11d import credentials
from vx11d.errors import InputError

TOKEN = "legacy-token-0123456789abcdef"


@pytest.fixture
def where(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    d = tmp_path / "credentials.d"
    d.mkdir(mode=0o750)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    cfg = tmp_path / "vx11.yml"
    cfg.write_text(f"db:\n  path: {tmp_path / 'vx11.db'}\ngateway:\n  token_file: {token}\n"
                   f"  credentials_dir: {d}\n")
    return str(d), str(token), str(cfg)


def ctl(cfg, *args):
    return subprocess.run([sys.executable, "-m", "vx11d.ctl.main", "--config", cfg, *args],
                          capture_output=True, text=True, timeout=60)


def test_add_keeps_only_a_digest_0640(where):
    d, token, _ = where
    secret = credentials.add(d, "prom-scraper", frozenset({"read"}), token)
    path = os.path.join(d, "prom-scraper")
    with open(path) as f:
        raw = f.read()
    assert secret not in raw
    doc = json.loads(raw)
    assert doc["digest"] == "sha256:" + credentials.digest(secret).hex()
    assert doc["scopes"] == ["read"] and doc["created"].endswith("Z")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert os.stat(path).st_gid == os.stat(d).st_gid
    assert sorted(os.listdir(d)) == ["prom-scraper"]  # no temporary file left


def test_add_refuses_an_existing_name_and_the_legacy_admin(where):
    d, token, _ = where
    credentials.add(d, "a", frozenset({"chat"}), token)
    with pytest.raises(InputError, match="exists"):
        credentials.add(d, "a", frozenset({"chat"}), token)
    with pytest.raises(InputError, match="token file"):
        credentials.add(d, "admin", frozenset({"admin"}), token)


@pytest.mark.parametrize("name", ["", "A", "../x", ".hidden", "a b", "x" * 65, "é"])
def test_bad_names_refused(where, name):
    d, token, _ = where
    with pytest.raises(InputError, match="credential name"):
        credentials.add(d, name, frozenset({"read"}), token)


@pytest.mark.parametrize("given", [["root"], [""], ["read,write"]])
def test_bad_scopes_refused(given):
    with pytest.raises(InputError, match="choose from read, chat, operate, admin"):
        credentials.parse_scopes(given)


def test_revoke_removes_the_file_and_empties_the_legacy_token(where):
    d, token, _ = where
    credentials.add(d, "a", frozenset({"chat"}), token)
    assert "removed" in credentials.revoke(d, "a", token)
    assert os.listdir(d) == []
    assert "emptied" in credentials.revoke(d, "admin", token)
    assert os.path.exists(token) and os.path.getsize(token) == 0
    with pytest.raises(InputError, match="no credential admin"):
        credentials.revoke(d, "admin", token)
    creds, errors, legacy = credentials.load_all(d, "token", token)
    assert creds == [] and errors == [] and legacy is None


def test_a_file_named_admin_shadows_the_legacy_token(where):
    d, token, _ = where
    credentials.revoke(d, "admin", token)
    secret = credentials.add(d, "admin", frozenset({"admin"}), token)
    with open(token, "w") as f:
        f.write(TOKEN)
    creds, _, legacy = credentials.load_all(d, "token", token)
    assert [c.name for c in creds] == ["admin"] and legacy is None
    assert creds[0].digest == credentials.digest(secret)


@pytest.mark.parametrize("body,reason", [
    ("{", "not a credential"), ("[]", "JSON object"),
    ('{"digest": "md5:x", "scopes": ["read"]}', "digest must be"),
    ('{"digest": "sha256:' + "a" * 64 + '", "scopes": ["sudo"]}', "choose from"),
    ('{"digest": "sha256:' + "a" * 64 + '", "scopes": []}', "choose from"),
    ('{"digest": "sha256:' + "a" * 64 + '", "scopes": ["read"], "created": "yesterday"}',
     "ISO 8601"),
    ('{"digest": "sha256:' + "a" * 64 + '", "scopes": ["read"], "secret": "x"}',
     "unknown key"),
])
def test_malformed_files_refused_with_the_reason(where, body, reason):
    d, _token, _ = where
    p = os.path.join(d, "bad")
    with open(p, "w") as f:
        f.write(body)
    os.chmod(p, 0o600)
    creds, errors = credentials.load_dir(d)
    assert creds == [] and len(errors) == 1
    assert reason in errors[0].reason and errors[0].path == p


def test_ctl_token_add_list_revoke(where):
    _d, token, cfg = where
    r = ctl(cfg, "token", "add", "ci-bot", "--scope", "chat", "--scope", "read")
    assert r.returncode == 0, r.stderr
    secret = r.stdout.strip()
    assert len(secret) >= 40 and "\n" not in secret
    r = ctl(cfg, "token", "list", "--json")
    assert r.returncode == 0, r.stderr
    listed = {c["name"]: c for c in json.loads(r.stdout)["credentials"]}
    assert listed["ci-bot"]["scopes"] == ["chat", "read"]
    assert listed["admin"]["scopes"] == ["admin"] and listed["admin"]["path"] == token
    assert secret not in r.stdout and "sha256" not in r.stdout
    text = ctl(cfg, "token", "list").stdout
    assert "ci-bot" in text and "ago)" in text and "None" not in text
    r = ctl(cfg, "token", "add", "x", "--scope", "root")
    assert r.returncode == 2 and "choose from" in r.stderr
    r = ctl(cfg, "token", "revoke", "ci-bot")
    assert r.returncode == 0 and "revoked ci-bot" in r.stdout
    r = ctl(cfg, "token", "revoke", "ci-bot")
    assert r.returncode == 2 and "no credential ci-bot" in r.stderr


def test_ctl_token_add_json_shows_the_secret_once(where):
    _, _, cfg = where
    r = ctl(cfg, "token", "add", "x", "--scope", "read", "--json")
    out = json.loads(r.stdout)
    assert out["scopes"] == ["read"] and len(out["secret"]) >= 40
