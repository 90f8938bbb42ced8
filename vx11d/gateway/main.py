"""``vx11d gateway``: the wiring of tentaculo_link (socket-activated on :8000, Type=notify)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time

from aiohttp import web

from .. import journal, metrics, runtime, textfmt, units
from ..config import Config
from ..db import Database, stale_read_only_view
from ..errors import DbReadOnly
from . import health, tls
from .app import KEYRING, LIMITER, METRICS, TLS, build_app
from .auth import Keyring
from .context import GatewayContext
from .http import BadRequestLog

log = logging.getLogger("vx11.gateway")
RENEW_AFTER = 5.0  # seconds up before a stale read-only view may end this process
# At a stop: how long connections accepted just before may take to finish their TLS
# handshake and send their request (a stop ends sooner once none is left)
DRAIN_GRACE = 3.0


def activation_sockets() -> list[socket.socket]:
    """The listening sockets systemd passed (vx11-gateway.socket: 127.0.0.1 and ::1)."""
    from systemd.daemon import listen_fds

    return [socket.socket(fileno=fd) for fd in listen_fds()]  # checks LISTEN_PID


def listening_socket(address: str, port: int) -> socket.socket:
    """What vx11-gateway.socket makes, when not socket-activated: TCP_NODELAY on the
    listener, so accepted connections have it from the first byte (a TLS handshake's
    flights are not held back by Nagle's algorithm waiting for a delayed ACK)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((address, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


class GatewayService:
    """The gateway as a runtime service."""

    component = "gateway"
    interval = 5.0

    def __init__(self, cfg: Config, db: Database, registry) -> None:
        self.ctx = GatewayContext(cfg=cfg, db=db, registry=registry)
        self.runner: web.AppRunner | None = None
        self.where = ""
        self.metrics_server = None

    async def start(self) -> None:
        self.started = time.monotonic()
        cfg = self.ctx.cfg.gateway
        keyring = Keyring(cfg.credentials_dir, cfg.token_credential, cfg.token_file)
        keyring.load()  # CredentialError (exit 78) when no credential is usable
        src = tls.source(cfg.tls_cert_file, cfg.tls_key_file)
        state = tls.Tls.load(src) if src is not None else None  # TlsError: exit 78
        self.app = build_app(self.ctx, keyring, tls_state=state)
        self.runner = web.AppRunner(self.app, keepalive_timeout=cfg.keepalive_timeout,
                                    access_log=None, handle_signals=False)
        await self.runner.setup()
        ssl_ctx = state.context if state is not None else None
        socks = activation_sockets()
        sites: list[web.BaseSite] = [web.SockSite(self.runner, s, ssl_context=ssl_ctx)
                                     for s in socks]
        if socks:
            self.where = "socket-activated on " + " ".join(_addr(s.getsockname())
                                                            for s in socks)
        else:
            sites = [web.SockSite(self.runner, listening_socket(
                cfg.listen_address, cfg.listen_port), ssl_context=ssl_ctx)]
            self.where = f"listening on {_addr((cfg.listen_address, cfg.listen_port))}"
        for site in sites:
            await site.start()
        self.wide = [a for a in ([s.getsockname()[0] for s in socks if s.family in (
            socket.AF_INET, socket.AF_INET6)] or [cfg.listen_address])
            if not tls.is_loopback(a)]
        self.where += " (TLS)" if state is not None else " (plain HTTP)"
        if state is None and cfg.plain_http_beyond_loopback:
            journal.event(log, "plain_http_beyond_loopback", "gateway.plain_http_beyond_"
                          "loopback is on: peers beyond loopback are served over plain "
                          "HTTP and send their credentials in clear; configure TLS "
                          "(docs/security.md)", level=logging.WARNING)
        elif state is None and self.wide:
            journal.event(log, "plain_http_loopback_only", "listening on %s without TLS: "
                          "peers beyond loopback are refused (403 tls_required) until TLS "
                          "is configured (docs/security.md)", ", ".join(self.wide),
                          level=logging.WARNING)
        self.metrics_server = metrics.serve(self.ctx.registry, cfg.metrics_address,
                                            cfg.metrics_port)
        journal.event(log, "gateway_started", "tentaculo_link %s", self.where)

    async def tick(self) -> None:
        self.app[LIMITER].prune()
        if self.ctx.db.health()[0] != "ok" or not self.ctx.db.migrated:
            health.kick(self.app)  # the probe finds writes working again (no request needed)
        self._renew_if_stale_read_only()

    def _renew_if_stale_read_only(self) -> None:
        """Exit cleanly when only our mount namespace still has the state dir read-only.

        The socket keeps listening and its next connection starts a gateway with a
        fresh copy of the mounts (no auto-restart, no start limit involved).
        """
        fault = self.ctx.db.fault
        if not isinstance(fault, DbReadOnly) or time.monotonic() - self.started < RENEW_AFTER:
            return
        if stale_read_only_view(self.ctx.db.path):
            journal.event(log, "gateway_renew", "the state filesystem is read-write again, "
                          "but this process still sees it read-only (mounts copied at "
                          "start): exiting for a fresh start on the next connection",
                          level=logging.WARNING)
            os.kill(os.getpid(), signal.SIGTERM)

    def status(self) -> str:
        where = self.where
        cfg = self.ctx.cfg.gateway
        state_tls = self.app.get(TLS)
        if state_tls is None and cfg.plain_http_beyond_loopback:
            where += "; WARNING: plain HTTP beyond loopback (credentials in clear)"
        elif state_tls is not None:
            left = state_tls.expiring()
            if left is not None:
                where += ("; TLS certificate EXPIRED " if left <= 0 else
                          "; TLS certificate expires ") + textfmt.relative(state_tls.expires)
        state, cause, _ = self.ctx.db.health()
        if state != "ok":
            return f"degraded: {cause.replace('_', ' ')} (writes refused, 503); {where}"
        return where

    async def reload(self, cfg: Config) -> None:
        """New config for route modules and the credentials re-read; listeners stay."""
        self.ctx.cfg = cfg
        keyring = self.app[KEYRING]
        g = cfg.gateway
        keyring.directory, keyring.token_credential, keyring.token_file = (
            g.credentials_dir, g.token_credential, g.token_file)
        await keyring.fresh(now=True)
        self._reload_tls(cfg)

    def _reload_tls(self, cfg: Config) -> None:
        """A renewed certificate: checked, then used for every new connection."""
        state = self.app.get(TLS)
        try:
            src = tls.source(cfg.gateway.tls_cert_file, cfg.gateway.tls_key_file)
            if state is None or src is None:
                if (state is None) != (src is None):
                    log.warning("turning TLS on or off needs a restart: systemctl restart "
                                "vx11-gateway.service (the socket stays open meanwhile)",
                                extra={"VX11_EVENT": "tls_reload_refused"})
                return
            expires = state.reload(src)
        except tls.TlsError as e:
            log.error("TLS not reloaded, keeping the running certificate: %s", e,
                      extra={"VX11_EVENT": "tls_reload_refused", "VX11_CONFIG_KEY": e.key})
            return
        self.app[METRICS]["tls_expiry"].set(expires)
        journal.event(log, "tls_reloaded", "TLS certificate %s loaded, expires %s",
                      src.cert, textfmt.when(expires))

    async def stop(self) -> None:
        if self.runner is not None:
            # Stop accepting first (the socket unit keeps :8000: the next process takes
            # what queues meanwhile). A connection accepted just before may still be in
            # its TLS handshake (aiohttp does not know it yet) or sending its request,
            # and aiohttp's shutdown closes those at once (the client sees a reset):
            # let them become requests, which the shutdown then waits for.
            listeners = [site._server for site in self.runner.sites
                         if getattr(site, "_server", None) is not None]
            for site in list(self.runner.sites):
                await site.stop()
            await _drain(self.runner.server, listeners)
            await self.runner.cleanup()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()


async def _drain(server, listeners: list) -> None:
    """Wait (at most DRAIN_GRACE) until every connection the closed listeners accepted
    is either gone or an idle keep-alive connection that has served its request.

    ``asyncio.Server`` counts its live transports (handshakes included); aiohttp knows
    the connections past their handshake, and which of those wait for a next request.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_GRACE
    while loop.time() < deadline:
        live = sum(getattr(s, "_active_count", 0) for s in listeners)
        conns = list(server.connections) if server is not None else []
        idle = sum(1 for c in conns if _idle_keepalive(c))
        if live <= idle:
            return
        await asyncio.sleep(0.02)


def _idle_keepalive(conn) -> bool:
    """A connection that served its requests and waits for a next one: closing it is
    the ordinary keep-alive close a client expects (aiohttp's RequestHandler state)."""
    return (getattr(conn, "_request_count", 0) > 0
            and not getattr(conn, "_request_in_progress", False)
            and not getattr(conn, "_messages", None))


def _addr(name: object) -> str:
    """``0.0.0.0:8000``, ``[::]:8000`` or a UNIX path, from a getsockname() value."""
    if isinstance(name, tuple) and len(name) >= 2:
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


def main(cfg: Config, argv: list[str]) -> int:
    """Wire config, DB, metrics and the app, and run until SIGTERM."""
    units.lean_pystemd()  # /health's unit states: the D-Bus binding without lxml (~7 MB)
    logging.getLogger("aiohttp.server").addFilter(BadRequestLog())
    registry = metrics.new_registry("gateway")
    # No DB I/O before serving: a read-only, full or missing state dir must not stop the
    # entrypoint (a crash here restart-loops into the start limit and fails the
    # socket). Migrations run on the first probe that can write (health.py).
    db = Database.from_config(cfg)
    db.migrate_on_probe()
    metrics.register_db(registry, db)
    return asyncio.run(runtime.run_async(GatewayService(cfg, db, registry)))
