"""Token loading and checking: modes, credentials, constant-time compare, failure limiter."""

from __future__ import annotations

import os

import pytest

from vx11d.gateway.auth import (
    FailureLimiter,
    TokenChecker,
    TokenError,
    load_token,
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
    assert load_token("token", good) == TOKEN
    bad = write(tmp_path / "t2", TOKEN, 0o644)
    with pytest.raises(TokenError, match="must be 0600"):
        load_token("token", bad)


def test_credential_preferred_over_file(tmp_path, monkeypatch):
    creds = tmp_path / "creds"
    creds.mkdir()
    write(creds / "token", "from-credential-0123456789", 0o444)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_token("token", str(tmp_path / "absent")) == "from-credential-0123456789"


@pytest.mark.parametrize("content,reason", [("short", "shorter than 16"),
                                            ("has space in the token x", "without spaces"),
                                            ("tökén-with-non-ascii-chars", "ASCII")])
def test_bad_tokens_refused(tmp_path, monkeypatch, content, reason):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(TokenError, match=reason):
        load_token("token", write(tmp_path / "t", content))


def test_symlinked_token_file_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    real = write(tmp_path / "real", TOKEN)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(TokenError):
        load_token("token", str(tmp_path / "link"))


def test_missing_token_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(TokenError, match="No such file"):
        load_token("token", str(tmp_path / "absent"))


@pytest.mark.parametrize("x,auth,expected", [
    ([TOKEN], [], [TOKEN]), ([], [f"Bearer {TOKEN}"], [TOKEN]),
    ([], [f"bearer  {TOKEN}"], [TOKEN]), ([], [f"Basic {TOKEN}"], [""]), ([], [], []),
    ([""], [], [""]), (["a", "b"], ["Bearer c"], ["a", "b", "c"]),
])
def test_presented_tokens(x, auth, expected):
    assert presented_tokens(x, auth) == expected


@pytest.mark.parametrize("presented", [None, "", "wrong", TOKEN + "x", TOKEN[:-1],
                                       "é" * 10, "x" * 100_000, TOKEN.upper()])
def test_checker_rejects(presented):
    assert not TokenChecker(TOKEN).valid(presented)


def test_checker_accepts_and_replaces():
    c = TokenChecker(TOKEN)
    assert c.valid(TOKEN)
    c.replace("another-token-0123456789")
    assert not c.valid(TOKEN) and c.valid("another-token-0123456789")


def test_limiter_blocks_after_limit_then_forgets():
    now = [0.0]
    lim = FailureLimiter(3, 60, clock=lambda: now[0])
    for _ in range(3):
        assert lim.blocked("a") == 0
        lim.failed("a")
    assert lim.blocked("a") == pytest.approx(60)
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
