"""Credential checking at the gateway: the legacy token file, constant-time matching
over the set, the failure limiter, and re-reading the set when its files change."""

from __future__ import annotations

import asyncio
import os

import pytest

from vx11d import credentials
from vx11d.credentials import CredentialError, read_legacy
from vx11d.gateway.auth import (
    CredentialSet,
    FailureLimiter,
    Keyring,
    presented_tokens,
)

TOKEN = "s3cret-token-0123456789abcdef"


def write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_token_file_must_be_0600(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    good = write(tmp_path / "t", TOKEN + "\n")
    assert read_legacy("token", good) == TOKEN
    bad = write(tmp_path / "t2", TOKEN, 0o644)
    with pytest.raises(CredentialError, match="must be 600 or stricter"):
        read_legacy("token", bad)


def test_world_readable_token_file_refused_even_behind_a_credential(tmp_path, monkeypatch):
    """LoadCredential= copies /etc/vx11/token; a 0644 source must still be refused."""
    src = write(tmp_path / "token", TOKEN, 0o644)
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "token", TOKEN, 0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with pytest.raises(CredentialError, match=f"mode 644 .* chmod 600 {src}") as e:
        read_legacy("token", src)
    assert e.value.key == "gateway.token_file"
    os.chmod(src, 0o600)
    assert read_legacy("token", src) == TOKEN


def test_credential_preferred_over_file(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "token", "from-credential-0123456789", 0o444)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_legacy("token", str(tmp_path / "absent")) == "from-credential-0123456789"


def test_token_file_changed_after_start_makes_the_stale_copy_invalid(tmp_path, monkeypatch):
    """systemd copies the token at start: once the file changes, the copy's old secret
    must not stay valid (the file is read itself when this process may)."""
    src = write(tmp_path / "token", TOKEN)
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "token", TOKEN, 0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_legacy("token", src) == TOKEN
    write(tmp_path / "token", "a-new-token-0123456789")
    os.utime(src, ns=(os.stat(creds / "token").st_mtime_ns + 10**9,) * 2)
    assert read_legacy("token", src) == "a-new-token-0123456789"
    os.chmod(src, 0o000)
    if os.geteuid() != 0:
        with pytest.raises(CredentialError, match="restart vx11-gateway"):
            read_legacy("token", src)


def test_empty_or_missing_token_file_is_no_credential(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert read_legacy("token", str(tmp_path / "absent")) is None
    assert read_legacy("token", write(tmp_path / "t", "")) is None


@pytest.mark.parametrize("content,reason", [("short", "shorter than 16"),
                                            ("has space in the token x", "without spaces"),
                                            ("tökén-with-non-ascii-chars", "ASCII")])
def test_bad_tokens_refused(tmp_path, monkeypatch, content, reason):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(CredentialError, match=reason):
        read_legacy("token", write(tmp_path / "t", content))


def test_symlinked_token_file_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    real = write(tmp_path / "real", TOKEN)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(CredentialError):
        read_legacy("token", str(tmp_path / "link"))


@pytest.mark.parametrize("x,auth,expected", [
    ([TOKEN], [], [TOKEN]), ([], [f"Bearer {TOKEN}"], [TOKEN]),
    ([], [f"bearer  {TOKEN}"], [TOKEN]), ([], [f"Basic {TOKEN}"], [""]), ([], [], []),
    ([""], [], [""]), (["a", "b"], ["Bearer c"], ["a", "b", "c"]),
])
def test_presented_tokens(x, auth, expected):
    assert presented_tokens(x, auth) == expected


@pytest.mark.parametrize("presented", [None, "", "wrong", TOKEN + "x", TOKEN[:-1],
                                       "é" * 10, "x" * 100_000, TOKEN.upper()])
def test_set_rejects(presented):
    assert Keyring.fixed(TOKEN).current.match(presented) is None


def test_set_matches_the_right_credential():
    a = credentials.Credential("a", frozenset({"read"}), credentials.digest(TOKEN), "", "")
    b = credentials.Credential("b", frozenset({"chat"}), credentials.digest("other-0123456789"),
                               "", "")
    s = CredentialSet([a, b])
    assert s.match(TOKEN) is a and s.match("other-0123456789") is b
    assert s.match("neither-0123456789") is None


def _keyring(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    d = tmp_path / "credentials.d"
    d.mkdir(mode=0o750)
    token = write(tmp_path / "token", TOKEN)
    k = Keyring(str(d), "token", token)
    k.load()
    return k, str(d), token


def test_keyring_sees_added_and_revoked_credentials_without_restart(tmp_path, monkeypatch):
    now = [0.0]
    k, d, token = _keyring(tmp_path, monkeypatch)
    k.clock = lambda: now[0]
    assert k.current.match(TOKEN).name == "admin"
    secret = credentials.add(d, "reader", frozenset({"read"}), token)

    async def run():
        await k.fresh()  # within CHECK_EVERY of the last check: not looked at
        assert k.current.match(secret) is None
        await k.fresh(now=True)  # a miss looks at once
        assert k.current.match(secret).scopes == {"read"}
        credentials.revoke(d, "reader", token)
        await k.fresh()
        assert k.current.match(secret) is not None  # bounded staleness, not yet
        now[0] += 1.0
        await k.fresh()
        assert k.current.match(secret) is None
        credentials.add(d, "ops", frozenset({"operate"}), token)
        credentials.revoke(d, "admin", token)  # the legacy token: emptied
        now[0] += 1.0
        await k.fresh()
        assert k.current.match(TOKEN) is None
        assert k.current.names == {"ops"}

    asyncio.run(run())


def test_keyring_keeps_previous_set_when_none_is_left(tmp_path, monkeypatch):
    """A reload that would leave no credential keeps the previous set (and says so)."""
    k, _d, token = _keyring(tmp_path, monkeypatch)
    os.truncate(token, 0)

    async def run():
        await k.fresh(now=True)

    asyncio.run(run())
    assert k.current.match(TOKEN) is not None


def test_broken_credential_file_refused_alone(tmp_path, monkeypatch):
    k, _d, _token = _keyring(tmp_path, monkeypatch)
    write(tmp_path / "credentials.d" / "broken", "{not json", 0o640)
    write(tmp_path / "credentials.d" / "loose", '{"digest": "sha256:' + "0" * 64
          + '", "scopes": ["read"]}', 0o644)
    k.load()
    assert k.current.names == {"admin"}
    assert {os.path.basename(e.path) for e in k.errors} == {"broken", "loose"}


def test_limiter_blocks_after_limit_then_forgets():
    now = [0.0]
    lim = FailureLimiter(3, 60, clock=lambda: now[0])
    for n in range(3):
        assert lim.blocked("a") == 0
        # the failure that blocks says so, once (the journal's auth_client_blocked)
        assert lim.failed("a") == (pytest.approx(60) if n == 2 else 0)
    assert lim.blocked("a") == pytest.approx(60)
    assert lim.failed("a") == 0  # blocked already
    assert lim.blocked("b") == 0
    now[0] = 61
    assert lim.blocked("a") == 0
    lim.prune()
    assert not lim._fails


def test_limiter_memory_is_bounded(monkeypatch):
    import vx11d.gateway.auth as auth

    monkeypatch.setattr(auth, "MAX_TRACKED_CLIENTS", 100)
    lim = FailureLimiter(3, 60)
    for i in range(1000):
        lim.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(lim._fails) == 100
