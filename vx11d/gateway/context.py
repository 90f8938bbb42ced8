"""What every gateway route module gets: the contract between the app and its routes.

A route module is ``vx11d.gateway.<name>`` with ``setup(app)``; it registers handlers
that read ``request.app[CTX]``. Authentication, request-size limits, timeouts, JSON
errors and request metrics are done by the app's middlewares, so a handler only ever
sees authenticated requests (``/health`` excepted).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from ..config import Config
from ..db import Database


@dataclass
class GatewayContext:
    """Shared state of one gateway process."""

    cfg: Config
    db: Database
    registry: CollectorRegistry
    # Route modules may keep their own state here, under their module name.
    extras: dict[str, Any] = field(default_factory=dict)


CTX: web.AppKey[GatewayContext] = web.AppKey("vx11_ctx", GatewayContext)
