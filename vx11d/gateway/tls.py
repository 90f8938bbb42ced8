"""TLS on :8000: the certificate and key, checked at start, renewed without a restart.

Where they come from: the systemd credentials ``tls.crt`` and ``tls.key``
(``LoadCredential=`` in a drop-in, so only the gateway reads them), else the files
``gateway.tls_cert_file`` and ``gateway.tls_key_file``. Neither: TLS is off and the
gateway serves loopback peers only, unless ``gateway.plain_http_beyond_loopback`` (see
:func:`peer_allowed`). One without the other, a file that is missing or unreadable,
not PEM, a key that does not match the certificate, an encrypted key, or a certificate
that has expired or is not valid yet: a :class:`TlsError` naming the file (exit 78 at
start; on reload the running pair stays).

The context speaks TLS 1.2 and 1.3 only; TLS 1.2 with ECDHE and AEAD ciphers only
(Mozilla's "intermediate" profile), no compression, no renegotiation. Renewal:
``systemctl reload vx11-gateway`` (SIGHUP) checks the new pair in a scratch context,
then loads it into the live one: connections made from then on get the new
certificate, none is refused or dropped.

Expiry is read without a parser of our own: an in-memory handshake against the
certificate as its own trust anchor (``VERIFY_X509_PARTIAL_CHAIN``) makes OpenSSL
check its validity dates and hand back ``notAfter``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import ssl
import time
from dataclasses import dataclass

from ..errors import ConfigError

CERT_CREDENTIAL, KEY_CREDENTIAL = "tls.crt", "tls.key"
CIPHERS_TLS12 = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                 "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                 "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305")
EXPIRY_WARNING = 14 * 86400.0


class TlsError(ConfigError):
    """The certificate or key cannot be used (exit 78 at start)."""

    def __init__(self, path: str, reason: str, key: str = "gateway.tls_cert_file"):
        super().__init__(path, key, reason)


@dataclass(frozen=True)
class TlsSource:
    cert: str
    key: str
    via: str  # "credential" or "file"


def source(cert_file: str, key_file: str) -> TlsSource | None:
    """Where the pair comes from (credentials first), or None when TLS is not configured."""
    cred_dir = os.environ.get("CREDENTIALS_DIRECTORY", "")
    if cred_dir:
        c, k = (os.path.join(cred_dir, n) for n in (CERT_CREDENTIAL, KEY_CREDENTIAL))
        have_c, have_k = os.path.exists(c), os.path.exists(k)
        if have_c and have_k:
            return TlsSource(c, k, "credential")
        if have_c or have_k:
            missing = k if have_c else c
            raise TlsError(missing, "systemd hands in only one of the credentials tls.crt "
                           "and tls.key; give both (LoadCredential=) or neither")
    if cert_file and key_file:
        return TlsSource(cert_file, key_file, "file")
    if cert_file or key_file:
        raise TlsError(cert_file or key_file, "set both gateway.tls_cert_file and "
                       "gateway.tls_key_file, or neither",
                       key="gateway.tls_cert_file" if cert_file else "gateway.tls_key_file")
    return None


def _no_password() -> bytes:
    raise ValueError("encrypted")


def _readable(path: str, key: str) -> None:
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 20)
    except OSError as e:
        raise TlsError(path, f"cannot read it: {e.strerror}", key=key) from e
    if b"-----BEGIN " not in data:
        raise TlsError(path, "not a PEM file", key=key)


def new_context() -> ssl.SSLContext:
    """A server context with the project's protocol and cipher policy (no pair loaded)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS_TLS12)
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
                    | ssl.OP_NO_RENEGOTIATION)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _load_pair(ctx: ssl.SSLContext, src: TlsSource) -> None:
    _readable(src.cert, "gateway.tls_cert_file")
    _readable(src.key, "gateway.tls_key_file")
    try:
        ctx.load_cert_chain(src.cert, src.key, password=_no_password)
    except ValueError as e:
        raise TlsError(src.key, "the key is encrypted; give it unencrypted (it is read "
                       "by the gateway only)", key="gateway.tls_key_file") from e
    except ssl.SSLError as e:
        reason = (e.reason or "").upper()
        if "MISMATCH" in reason:
            raise TlsError(src.key, f"the key does not match the certificate {src.cert}",
                           key="gateway.tls_key_file") from e
        bad_cert = _cert_unparsable(src.cert)
        path, key = (src.cert, "gateway.tls_cert_file") if bad_cert else (
            src.key, "gateway.tls_key_file")
        what = "certificate" if bad_cert else "private key"
        raise TlsError(path, f"not a usable {what} ({e.reason or e})", key=key) from e


def _cert_unparsable(path: str) -> bool:
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError):
        return True
    return False


def not_after(src: TlsSource, server: ssl.SSLContext) -> float:
    """The certificate's expiry (epoch seconds); TlsError when expired or not yet valid."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    client.load_verify_locations(cafile=src.cert)
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    cli = client.wrap_bio(c_in, c_out)
    done = set()
    try:
        for _ in range(8):
            for end in (cli, srv):
                if end not in done:
                    with contextlib.suppress(ssl.SSLWantReadError):
                        end.do_handshake()
                        done.add(end)
            if s_out.pending:
                c_in.write(s_out.read())
            if c_out.pending:
                s_in.write(c_out.read())
            if len(done) == 2:
                break
    except ssl.SSLCertVerificationError as e:
        raise TlsError(src.cert, f"the certificate is not valid now: {e.verify_message}") from e
    except ssl.SSLError as e:
        raise TlsError(src.cert, f"the certificate cannot serve a handshake: {e}") from e
    peer = cli.getpeercert() if cli in done else None
    if not peer:
        raise TlsError(src.cert, "the certificate cannot serve a handshake")
    return float(ssl.cert_time_to_seconds(peer["notAfter"]))


@dataclass
class Tls:
    """The live context and what the operator needs to know about its certificate."""

    context: ssl.SSLContext
    src: TlsSource
    expires: float

    @classmethod
    def load(cls, src: TlsSource) -> Tls:
        ctx = new_context()
        _load_pair(ctx, src)
        return cls(ctx, src, not_after(src, ctx))

    def reload(self, src: TlsSource) -> float:
        """Check ``src`` in a scratch context, then load it into the live one."""
        scratch = new_context()
        _load_pair(scratch, src)
        expires = not_after(src, scratch)
        self.context.load_cert_chain(src.cert, src.key, password=_no_password)
        self.src, self.expires = src, expires
        return expires

    def expiring(self, now: float | None = None) -> float | None:
        """Seconds left when within EXPIRY_WARNING of expiry (or past it), else None."""
        left = self.expires - (time.time() if now is None else now)
        return left if left < EXPIRY_WARNING else None


def is_loopback(remote: str | None) -> bool:
    """A peer on this host: 127/8, ::1, ::ffff:127.x, or a UNIX socket (no address)."""
    if not remote:
        return True
    try:
        ip = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool((mapped or ip).is_loopback)
