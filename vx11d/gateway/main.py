"""``vx11d gateway``: the wiring of tentaculo_link (socket-activated on :8000, Type=notify)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time

from aiohttp import web

from .. import journal, metrics, runtime
from ..config import Config
from ..db import Database, stale_read_only_view
from ..errors import DbReadOnly
from .app import KEYRING, LIMITER, build_app
from .auth import Keyring
from .context import GatewayContext
from .http import BadRequestLog

log = logging.getLogger("vx11.gateway")
RENEW_AFTER = 5.0  # seconds up before a stale read-only view may end this process


def activation_socket() -> socket.socket | None:
    """The listening socket systemd passed (vx11-gateway.socket), if any."""
    from systemd.daemon import listen_fds

    fds = listen_fds()  # checks LISTEN_PID and unsets the variables
    if not fds:
        return None
    return socket.socket(fileno=fds[0])


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
        self.app = build_app(self.ctx, keyring)
        self.runner = web.AppRunner(self.app, keepalive_timeout=cfg.keepalive_timeout,
                                    access_log=None, handle_signals=False)
        await self.runner.setup()
        sock = activation_socket()
        if sock is not None:
            site: web.BaseSite = web.SockSite(self.runner, sock)
            self.where = f"socket-activated on {_addr(sock.getsockname())}"
        else:
            site = web.TCPSite(self.runner, cfg.listen_address, cfg.listen_port,
                               reuse_address=True)
            self.where = f"listening on {cfg.listen_address}:{cfg.listen_port}"
        await site.start()
        self.metrics_server = metrics.serve(self.ctx.registry, cfg.metrics_address,
                                            cfg.metrics_port)
        journal.event(log, "gateway_started", "tentaculo_link %s", self.where)

    async def tick(self) -> None:
        self.app[LIMITER].prune()
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
        state, cause, _ = self.ctx.db.health()
        if state != "ok":
            return f"degraded: {cause.replace('_', ' ')} (writes refused, 503); {self.where}"
        return self.where

    async def reload(self, cfg: Config) -> None:
        """New config for route modules and the credentials re-read; listeners stay."""
        self.ctx.cfg = cfg
        keyring = self.app[KEYRING]
        g = cfg.gateway
        keyring.directory, keyring.token_credential, keyring.token_file = (
            g.credentials_dir, g.token_credential, g.token_file)
        await keyring.fresh(now=True)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()


def _addr(name: object) -> str:
    """``0.0.0.0:8000``, ``[::]:8000`` or a UNIX path, from a getsockname() value."""
    if isinstance(name, tuple) and len(name) >= 2:
        host, port = name[0], name[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return name.decode(errors="replace") if isinstance(name, bytes) else str(name)


def main(cfg: Config, argv: list[str]) -> int:
    """Wire config, DB, metrics and the app, and run until SIGTERM."""
    logging.getLogger("aiohttp.server").addFilter(BadRequestLog())
    registry = metrics.new_registry("gateway")
    # No DB I/O before serving: a read-only, full or missing state dir must not stop the
    # entrypoint (a crash here restart-loops into the start limit and fails the
    # socket). Migrations run on the first probe that can write (health.py).
    db = Database.from_config(cfg)
    db.migrate_on_probe()
    metrics.register_db(registry, db)
    return asyncio.run(runtime.run_async(GatewayService(cfg, db, registry)))
