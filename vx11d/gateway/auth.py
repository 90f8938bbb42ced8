"""Credentials at the gateway: the live set, checked in constant time, re-read on change.

Each presented secret is compared as a SHA-256 digest with :func:`hmac.compare_digest`
against every credential's digest (no early exit), so neither its length nor which
credential it resembles leaks through timing. A header that is missing, not ASCII, or
longer than :data:`MAX_HEADER` is simply not a valid credential (401), never an error.
Every credential presented must be valid (see :func:`presented_tokens`): a valid
``Authorization: Bearer`` beside a wrong ``X-VX11-Token`` (or the reverse) is 401.
Clients that keep failing are refused with 429 for the rest of the window.

The set (``gateway.credentials_dir`` plus the legacy token file, see
:mod:`vx11d.credentials`) is re-read without a restart and without refusing anything:
at most every :data:`CHECK_EVERY` seconds a request stats the files (a few ``stat``
calls on the event loop); when they changed, one reload reads them in a thread while
requests keep using the previous set, so a revocation is in force within about a
second. A secret that matches nothing also triggers that check at once, so a
credential just added works on its first request. Nothing runs while no request comes.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable

from .. import credentials, journal
from ..credentials import Credential, CredentialError

MAX_HEADER = 1024
MAX_TRACKED_CLIENTS = 10_000
CHECK_EVERY = 1.0  # seconds: the staleness bound of a revocation
log = logging.getLogger("vx11.gateway")


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


class CredentialSet:
    """An immutable set of credentials; :meth:`match` compares against every digest."""

    def __init__(self, creds: Iterable[Credential]):
        self.creds = tuple(creds)
        self.names = frozenset(c.name for c in self.creds)

    def match(self, presented: str | None) -> Credential | None:
        if presented is None or len(presented) > MAX_HEADER or not presented.isascii():
            return None
        candidate = credentials.digest(presented)
        found = None
        for c in self.creds:  # every digest, always: the time does not depend on which
            if hmac.compare_digest(candidate, c.digest) and found is None:
                found = c
        return found


class Keyring:
    """The gateway's live credential set, re-read when its files change."""

    def __init__(self, directory: str = "", token_credential: str = "token",  # noqa: S107
                 token_file: str = "", clock=time.monotonic):
        self.directory, self.token_credential, self.token_file = (
            directory, token_credential, token_file)
        self.clock = clock
        self.current = CredentialSet(())
        self._fp: tuple | None = None
        self._checked = float("-inf")
        self._reload: asyncio.Future | None = None
        self.reloads = 0
        self.errors: list[CredentialError] = []

    @classmethod
    def fixed(cls, secret: str, name: str = credentials.LEGACY_NAME,
              scopes: frozenset[str] = frozenset({"admin"})) -> Keyring:
        """One credential that never changes (tests, tools)."""
        return cls.of([Credential(name, scopes, credentials.digest(secret), "", "")])

    @classmethod
    def of(cls, creds: Iterable[Credential]) -> Keyring:
        """A set that never changes (tests, tools)."""
        k = cls()
        k.current = CredentialSet(creds)
        k._checked = float("inf")
        k._fp = credentials.fingerprint("", "")
        return k

    def load(self) -> CredentialSet:
        """Read the set now (blocking). CredentialError when no credential is usable."""
        fp = credentials.fingerprint(self.directory, self.token_file)
        creds, errors, legacy = credentials.load_all(self.directory, self.token_credential,
                                                     self.token_file)
        if legacy:
            journal.register_secret(legacy)
        if not creds:  # one line says it all: the start fails (exit 78) on it
            first = errors[0] if errors else None
            raise CredentialError(
                first.path if first else self.directory,
                (first.reason + "; " if first else "")
                + f"no usable credential: add one (vx11ctl token add NAME --scope admin) "
                f"or install {self.token_file}")
        for e in errors:
            if e not in self.errors:
                journal.event(log, "credential_refused", "credential refused (not valid "
                              "until fixed): %s", e, level=logging.ERROR, path=e.path)
        self.errors = errors
        self.current, self._fp = CredentialSet(creds), fp
        self._checked = self.clock()
        self.reloads += 1
        return self.current

    async def fresh(self, now: bool = False) -> None:
        """Bring the set up to date when its files changed; cheap when they did not.

        Checks at most every CHECK_EVERY seconds unless ``now``; one reload at a time,
        which every caller that needs it awaits. On a failed reload (no usable
        credential left) the previous set stays and the error is logged.
        """
        if self._reload is not None:
            await asyncio.shield(self._reload)
            return
        t = self.clock()
        if not now and t - self._checked < CHECK_EVERY:
            return
        self._checked = t
        if credentials.fingerprint(self.directory, self.token_file) == self._fp:
            return
        loop = asyncio.get_running_loop()
        self._reload = loop.run_in_executor(None, self._reload_now)
        try:
            await asyncio.shield(self._reload)
        finally:
            self._reload = None

    def _reload_now(self) -> None:
        before = self.current.names
        try:
            after = self.load().names
        except CredentialError as e:
            journal.event(log, "credentials_reload_refused", "credentials not reloaded, "
                          "keeping the previous set: %s", e, level=logging.ERROR)
            return
        except Exception:  # a bug must not fail the requests waiting on this reload
            log.exception("credentials not reloaded, keeping the previous set",
                          extra={"VX11_EVENT": "credentials_reload_refused"})
            return
        for name in sorted(after - before):
            journal.event(log, "credential_added", "credential %s is valid from now on",
                          name, credential=name)
        for name in sorted(before - after):
            journal.event(log, "credential_revoked", "credential %s is refused from now on",
                          name, credential=name, level=logging.WARNING)


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

    def failed(self, client: str) -> float:
        """Count a failure; the seconds ``client`` is now refused for when this one
        blocked it (it was not blocked before), else 0."""
        times = self._recent(client)
        times.append(self.clock())
        self._fails[client] = times[-self.limit:]
        self._fails.move_to_end(client)
        while len(self._fails) > MAX_TRACKED_CLIENTS:
            self._fails.popitem(last=False)
        return self.blocked(client) if len(times) == self.limit else 0.0

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
