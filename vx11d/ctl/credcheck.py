"""Scorecard rows about the gateway's credentials: file modes, and admin credentials.

``credential_files_modes``: the legacy token file 0600 (or stricter), the credentials
directory 0750 and each credential file 0640 (or stricter), none refused by the
gateway. ``admin_credentials``: how many credentials carry ``admin`` and how old each
is; at most :data:`ADMIN_MAX`, none older than :data:`ADMIN_MAX_AGE` (rotate them:
docs/security.md). No value or digest ever appears in a row.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import time

from .. import config, credentials, textfmt

ADMIN_MAX = 2
ADMIN_MAX_AGE = 365 * 86400.0


def _check(name: str, ok: bool, detail: str) -> dict[str, object]:
    return {"name": name, "ok": bool(ok), "detail": detail}


def _too_open(path: str, allowed: int) -> str | None:
    try:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{path}: {e.strerror}"
    if mode & ~allowed & 0o777:
        return f"{path} is mode {mode:04o} (at most {allowed:04o}: chmod {allowed:o} {path})"
    return None


def modes(g: config.GatewayConfig) -> dict[str, object]:
    """The credential files' modes, and files the gateway refuses."""
    bad = [p for p in (_too_open(g.token_file, 0o600), _too_open(g.credentials_dir, 0o750))
           if p]
    rows = credentials.listing(g.credentials_dir, g.token_credential, g.token_file)
    for c in rows:
        if c.path != g.token_file:
            problem = _too_open(c.path, 0o640)
            if problem:
                bad.append(problem)
            elif c.error:
                bad.append(f"{c.path}: {c.error}")
    return _check("credential_files_modes", not bad,
                  "; ".join(bad) if bad else f"{len(rows)} credential(s), modes ok")


def admins(g: config.GatewayConfig, now: float | None = None) -> dict[str, object]:
    """How many admin credentials exist and how old each is."""
    now = time.time() if now is None else now
    rows = [c for c in credentials.listing(g.credentials_dir, g.token_credential,
                                           g.token_file) if "admin" in c.scopes]
    ages = []
    old = []
    for c in rows:
        ts = credentials.created_ts(c.created)
        ages.append(f"{c.name} (created {textfmt.relative(ts, now)})")
        if ts is not None and now - ts > ADMIN_MAX_AGE:
            old.append(c.name)
    ok = 1 <= len(rows) <= ADMIN_MAX and not old
    detail = f"{len(rows)} admin credential(s)" + (f": {', '.join(ages)}" if ages else "")
    if len(rows) > ADMIN_MAX:
        detail += f"; more than {ADMIN_MAX}: give each client the least scope it needs"
    if old:
        detail += (f"; older than {textfmt.duration(ADMIN_MAX_AGE)}: {', '.join(old)} "
                   "(rotate: docs/security.md)")
    return _check("admin_credentials", ok, detail)


def listen_addresses(show_listen: str) -> list[str]:
    """Hosts from ``systemctl show -p Listen`` output (``Listen=[::1]:8000 (Stream)``);
    a bare port (``8000``) is every address, shown as ``*``."""
    out = []
    for line in show_listen.splitlines():
        _, _, value = line.partition("=")
        for item in value.split():
            if item.startswith("(") or not item:
                continue
            host, sep, _port = item.rpartition(":")
            out.append(host.strip("[]") if sep and host else "*")
    return out


def tls_or_loopback(g: config.GatewayConfig, listen: list[str], tls_credentials: bool
                    ) -> dict[str, object]:
    """TLS configured, or listening on loopback only; plain HTTP beyond it is a FAIL."""
    if g.plain_http_beyond_loopback:
        return _check("tls_or_loopback", False, "gateway.plain_http_beyond_loopback is on: "
                      "credentials cross the network in clear (docs/security.md)")
    if tls_credentials or (g.tls_cert_file and g.tls_key_file):
        via = "systemd credentials tls.crt/tls.key" if tls_credentials else g.tls_cert_file
        return _check("tls_or_loopback", True, f"TLS configured ({via})")
    listen = listen or [g.listen_address]
    wide = [a for a in listen if a == "*" or not is_loopback(a)]
    if wide:
        return _check("tls_or_loopback", False, f"listening on {', '.join(wide)} without "
                      "TLS: configure TLS or listen on loopback only (docs/security.md)")
    return _check("tls_or_loopback", True, f"loopback only ({', '.join(listen)}), no TLS")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
