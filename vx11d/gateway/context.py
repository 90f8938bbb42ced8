"""What every gateway route module gets: the contract between the app and its routes.

A route module is ``vx11d.gateway.<name>`` with ``setup(app)``; it registers handlers
that read ``request.app[CTX]``. Authentication, request-size limits, timeouts, JSON
errors and request metrics are done by the app's middlewares, so a handler only ever
sees authenticated requests (``/health`` excepted).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry

from ..config import Config
from ..db import Database
from ..errors import DbBusy

T = TypeVar("T")
DB_THREADS = 8  # SQLite work of the gateway runs here, never on the event loop


@dataclass
class GatewayContext:
    """Shared state of one gateway process."""

    cfg: Config
    db: Database
    registry: CollectorRegistry
    # Route modules may keep their own state here, under their module name.
    extras: dict[str, Any] = field(default_factory=dict)
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(
        DB_THREADS, thread_name_prefix="vx11-db"))

    def db_wait(self) -> float:
        """How long a handler waits for one DB call: the DB's own bound plus a margin."""
        return self.cfg.db.busy_timeout_ms / 1000 + float(self.cfg.db.write_deadline) + 1.0

    async def db_call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """``fn(*args)`` (blocking SQLite work) in the DB threads, bounded by db_wait().

        DB errors propagate as raised (a DbUnavailable becomes a 503 in the app); a call
        still waiting at the bound is a DbBusy, so no request waits on SQLite for long.
        """
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.pool, functools.partial(fn, *args, **kw))
        try:
            return await asyncio.wait_for(fut, self.db_wait())
        except TimeoutError as e:
            raise DbBusy(f"{self.db.path}: no answer from the database in "
                         f"{self.db_wait():g}s; retry later") from e


CTX: web.AppKey[GatewayContext] = web.AppKey("vx11_ctx", GatewayContext)
# Set by the auth middleware on a request that presented valid credentials: their
# names ("a" or "a,b", for the record of who asked) and the union of their scopes.
AUTHENTICATED: web.RequestKey[bool] = web.RequestKey("vx11_authenticated", bool)
CREDENTIAL: web.RequestKey[str] = web.RequestKey("vx11_credential", str)
SCOPES: web.RequestKey[frozenset] = web.RequestKey("vx11_scopes", frozenset)
