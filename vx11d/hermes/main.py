"""``vx11d hermes``: the wiring of the Hermes worker (Type=notify, UNIX socket, RSS guard).

READY is sent once the socket listens: the worker can take requests from then on (the
model loads on the first one; /health says ``unloaded`` → ``loading`` → ``loaded``).
The tick (every second) unloads the model after ``idle_unload`` without a chat request
and runs the RSS guard: above ``rss_limit`` the worker stops taking requests, lets the
running one finish (or fail at its deadline), records the reason and exits with
:data:`EXIT_RSS` so ``Restart=on-failure`` brings it back fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import stat
import time

from aiohttp import web

from .. import cgroupmem, journal, metrics, runtime
from ..config import Config
from ..confload import format_size
from ..errors import ConfigError
from .engine import Engine, rss_bytes
from .server import Worker, build_app, log_exit, new_metrics

log = logging.getLogger("vx11.hermes")

EXIT_RSS = 75  # EX_TEMPFAIL: restart me
RESTARTS_FILE = "restarts.json"  # in the socket's dir (RuntimeDirectoryPreserve=restart)
LAST_END_FILE = "last-end"  # written there by the unit's ExecStopPost= memory probe


class HermesService:
    """The worker as a runtime service."""

    component = "hermes"
    interval = 1.0

    def __init__(self, cfg: Config, registry) -> None:
        self.cfg = cfg
        self.registry = registry
        self.m = new_metrics(registry)
        self.engine = Engine(cfg.hermes, self.m)
        self.worker = Worker(cfg.hermes, self.engine, self.m, registry)
        self.runner: web.AppRunner | None = None
        self.metrics_server = None
        self.exit_code = 0
        self.restart_counts: dict[str, int] = {}
        self._drain: asyncio.Task | None = None
        self._restarts = os.path.join(os.path.dirname(cfg.hermes.socket), RESTARTS_FILE)

    async def start(self) -> None:
        h = self.cfg.hermes
        idle = rss_bytes()
        if idle > int(h.rss_limit):  # it would exit and restart for ever
            raise ConfigError(self.cfg.path, "hermes.rss_limit", f"{int(h.rss_limit)} bytes is "
                              f"below the idle worker's own RSS ({idle} bytes)")
        self._load_restarts()
        self._previous_end()
        self.m["rss_limit"].set(int(h.rss_limit))
        self.runner = web.AppRunner(build_app(self.worker), access_log=None,
                                    handle_signals=False)
        await self.runner.setup()
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(h.socket).st_mode):
                os.unlink(h.socket)  # stale socket of a previous run
        await web.UnixSite(self.runner, h.socket).start()
        os.chmod(h.socket, 0o660)
        if h.metrics_port:
            try:
                self.metrics_server = metrics.serve(self.registry, h.metrics_address,
                                                    h.metrics_port)
            except OSError as e:  # e.g. PrivateNetwork=yes without AF_INET: socket only
                log.warning("no /metrics on %s:%d (%s); it stays on the socket",
                            h.metrics_address, h.metrics_port, e)
        journal.event(log, "hermes_started", "Hermes worker on %s (model %s, loads on "
                      "first use)", h.socket, h.model_path, socket=h.socket)

    def _load_restarts(self) -> None:
        try:
            with open(self._restarts) as f:
                counts = json.load(f)
        except (OSError, ValueError):
            return
        for reason, n in counts.items() if isinstance(counts, dict) else ():
            if reason in ("rss_guard", "oom") and isinstance(n, int) and n > 0:
                self.m["restarts"].labels(reason).inc(n)
                self.restart_counts[reason] = n

    def _previous_end(self) -> None:
        """Was the previous process killed by the kernel for memory? (the unit's
        ExecStopPost= probe wrote what its cgroup said before systemd removed it)"""
        rep = cgroupmem.take(os.path.dirname(self.cfg.hermes.socket), LAST_END_FILE)
        if rep is None or not rep.oom:
            return
        self._record_restart("oom")
        journal.event(log, "hermes_oom_killed", "the kernel killed the previous Hermes "
                      "process: out of memory (peak %s of its %s limit); systemd restarted "
                      "it. Lower hermes.rss_limit below MemoryMax= or size the unit up",
                      format_size(rep.peak), format_size(rep.limit), level=logging.WARNING,
                      memory_peak=rep.peak, memory_max=rep.limit, oom_kills=rep.oom_kills)

    def _record_restart(self, reason: str) -> None:
        self.m["restarts"].labels(reason).inc()
        self.restart_counts[reason] = self.restart_counts.get(reason, 0) + 1
        counts = dict(self.restart_counts)
        with contextlib.suppress(OSError):
            tmp = self._restarts + ".tmp"
            with open(tmp, "w") as f:
                json.dump(counts, f)
            os.replace(tmp, self._restarts)

    async def tick(self) -> None:
        h = self.cfg.hermes
        rss = rss_bytes()
        self.m["rss"].set(rss)
        if rss > int(h.rss_limit) and self._drain is None:
            self._drain = asyncio.create_task(self._drain_and_exit(rss))
            return
        idle = time.monotonic() - self.engine.last_use
        if self.engine.state == "loaded" and not self.worker.busy() and idle > h.idle_unload:
            await self.engine.unload("idle")

    async def _drain_and_exit(self, rss: int) -> None:
        self.worker.draining = True
        log_exit("rss_guard", rss, int(self.cfg.hermes.rss_limit))
        deadline = time.monotonic() + self.cfg.hermes.request_timeout + 5
        while self.worker.busy() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._record_restart("rss_guard")
        self.exit_code = EXIT_RSS
        os.kill(os.getpid(), signal.SIGTERM)  # the runtime's normal stop path

    def status(self) -> str:
        e, w = self.engine, self.worker
        if w.draining:
            return "draining: RSS above the guard, restarting"
        text = f"model {e.state}"
        if e.state == "refused":
            text += f" ({e.reason[:120]})"
        return f"{text}, {w.running} running, {w.waiting} queued, RSS {rss_bytes() >> 20} MiB"

    async def reload(self, cfg: Config) -> None:
        """New limits apply at once; a changed model path unloads the old model."""
        old = self.cfg.hermes
        self.cfg = cfg
        for obj in (self.engine, self.worker):
            obj.cfg = cfg.hermes
        self.m["rss_limit"].set(int(cfg.hermes.rss_limit))
        self.engine.forget_refusal()
        self.worker.resize()
        if (old.model_path, old.model_sha256, old.n_ctx, old.parallel) != (
                cfg.hermes.model_path, cfg.hermes.model_sha256, cfg.hermes.n_ctx,
                cfg.hermes.parallel) \
                and not self.worker.busy():
            await self.engine.unload("reload")

    async def stop(self) -> None:
        self.worker.draining = True  # new requests: 503 while the runner shuts down
        self.worker.cancel_all()
        if self.runner is not None:
            await self.runner.cleanup()
        if self.engine.llm is not None:
            await self.engine.unload("shutdown")
        self.engine.shutdown()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.cfg.hermes.socket)


def main(cfg: Config, argv: list[str]) -> int:
    """Wire config, metrics and the worker, and run until SIGTERM (or the RSS guard)."""
    registry = metrics.new_registry("hermes")
    service = HermesService(cfg, registry)
    rc = asyncio.run(runtime.run_async(service))
    return service.exit_code or rc
