"""The API token: loaded from a systemd credential or a 0600 file, checked in constant time.

The token is compared as SHA-256 digests with :func:`hmac.compare_digest`, so neither
its length nor its content leaks through timing. A header that is missing, not ASCII,
or longer than :data:`MAX_HEADER` is simply not a valid token (401), never an error.
Every credential presented must be valid (see :func:`presented_tokens`): a valid
``Authorization: Bearer`` beside a wrong ``X-VX11-Token`` (or the reverse) is 401.
Clients that keep failing are refused with 429 for the rest of the window.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import time
from collections import OrderedDict

from ..errors import Vx11Error

MAX_HEADER = 1024
MAX_TRACKED_CLIENTS = 10_000


class TokenError(Vx11Error):
    """No usable token could be loaded."""


def load_token(credential: str, fallback_file: str) -> str:
    """The API token: ``$CREDENTIALS_DIRECTORY/<credential>``, else a 0600 file."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if cred_dir and os.path.exists(os.path.join(cred_dir, credential)):
        return _read(os.path.join(cred_dir, credential), check_mode=False)
    return _read(fallback_file, check_mode=True)


def _read(path: str, *, check_mode: bool) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise TokenError(f"token file {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if check_mode and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TokenError(f"token file {path} is mode {stat.S_IMODE(st.st_mode):o}; "
                             "it must be 0600 (chmod 600)")
        raw = os.read(fd, 4096)
    finally:
        os.close(fd)
    token = raw.decode("utf-8", "replace").strip()
    if len(token) < 16:
        raise TokenError(f"token in {path} is shorter than 16 characters")
    if not token.isascii() or any(c.isspace() for c in token):
        raise TokenError(f"token in {path} must be ASCII without spaces")
    return token


def presented_tokens(x_tokens: list[str], authorizations: list[str]) -> list[str]:
    """Every credential a request presents, in any order: each ``X-VX11-Token`` header
    and each ``Authorization`` header (the value of ``Bearer``; another scheme is
    presented as ``""``, never valid). The rule: a request is authenticated when it
    presents at least one credential and every one of them is valid."""
    out = list(x_tokens)
    for value in authorizations:
        scheme, _, rest = value.partition(" ")
        out.append(rest.strip() if scheme.lower() == "bearer" else "")
    return out


class TokenChecker:
    """Constant-time token check on digests."""

    def __init__(self, token: str):
        self.replace(token)

    def replace(self, token: str) -> None:
        """Use a new token from now on (SIGHUP after the credential changed)."""
        self._digest = hashlib.sha256(token.encode()).digest()

    def valid(self, presented: str | None) -> bool:
        if presented is None or len(presented) > MAX_HEADER or not presented.isascii():
            return False
        candidate = hashlib.sha256(presented.encode("ascii", "replace")).digest()
        return hmac.compare_digest(candidate, self._digest)


class FailureLimiter:
    """Counts failed attempts per client in a sliding window; bounded memory."""

    def __init__(self, limit: int, window: float, clock=time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self._fails: OrderedDict[str, list[float]] = OrderedDict()

    def blocked(self, client: str) -> float:
        """Seconds until ``client`` may try again (0: not blocked)."""
        times = self._recent(client)
        if len(times) < self.limit:
            return 0.0
        return max(0.0, times[0] + self.window - self.clock())

    def failed(self, client: str) -> None:
        times = self._recent(client)
        times.append(self.clock())
        self._fails[client] = times[-self.limit:]
        self._fails.move_to_end(client)
        while len(self._fails) > MAX_TRACKED_CLIENTS:
            self._fails.popitem(last=False)

    def blocked_clients(self) -> int:
        """How many clients are refused (429) right now; safe from another thread."""
        cutoff = self.clock() - self.window
        return sum(1 for times in list(self._fails.values())
                   if len([t for t in times if t > cutoff]) >= self.limit)

    def prune(self) -> None:
        for client in list(self._fails):
            if not self._recent(client):
                del self._fails[client]

    def _recent(self, client: str) -> list[float]:
        cutoff = self.clock() - self.window
        times = [t for t in self._fails.get(client, ()) if t > cutoff]
        if client in self._fails:
            self._fails[client] = times
        return times
