"""Where vx11ctl reaches the local gateway: its base URL, and with TLS, what to trust.

Without ``--url``: ``https://127.0.0.1:<port>`` when the gateway has TLS (the unit hands
it the credential ``tls.crt``, or ``gateway.tls_cert_file`` is set), trusting exactly
that certificate (the leaf as its own anchor: no host name to match on loopback);
``http://127.0.0.1:<port>`` otherwise. With ``--url https://…`` the system CAs, or
``--cacert FILE``.
"""

from __future__ import annotations

import ssl

from .. import config
from .units import systemctl


def tls_cert(g: config.GatewayConfig) -> str | None:
    """The gateway's certificate file, if it has TLS."""
    r = systemctl("show", "-p", "LoadCredential", "vx11-gateway.service", check=False)
    if r.returncode == 0:
        for item in r.stdout.replace("LoadCredential=", " ").split():
            name, _, path = item.partition(":")
            if name == "tls.crt" and path:
                return path
    return g.tls_cert_file or None


def endpoint(g: config.GatewayConfig, url: str | None = None, cacert: str | None = None
             ) -> tuple[str, ssl.SSLContext | None]:
    """(base URL, SSL context or None) for the local gateway."""
    if url:
        base = url.rstrip("/")
        if not base.startswith("https://"):
            return base, None
        return base, ssl.create_default_context(cafile=cacert)
    cert = tls_cert(g)
    if cert is None:
        return f"http://127.0.0.1:{g.listen_port}", None
    ctx = ssl.create_default_context(cafile=cacert or cert)
    if cacert is None:
        ctx.check_hostname = False  # pinned: this very certificate is the anchor
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return f"https://127.0.0.1:{g.listen_port}", ctx
