"""``/metrics`` in the Prometheus text format, on the main port and, with
``--metrics-port``, on a plain-HTTP port of its own.

With access.json it needs a caller like any route, and when access.json has a
``"monitoring"`` rule, one that the rule lists (a scrape key): Prometheus sends it
with ``authorization: {type: ApiKey, credentials_file: ...}``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import uvicorn
from prometheus_client.exposition import choose_encoder
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ExceptionHandler

from model_proxy.access import AccessGuard

from .registry import ProxyMetrics

logger = logging.getLogger(__name__)


async def metrics(request: Request) -> Response:
    # The rules of the config state in force (a reloaded access.json applies at once).
    in_force: Callable[[], AccessGuard] = request.app.state.access_in_force
    guard = in_force()
    guard.authorize_monitoring(await guard.authenticate(request.headers), route="/metrics")
    registry: ProxyMetrics = request.app.state.metrics
    # OpenMetrics when the scraper asks for it (Prometheus does), else the text format.
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(
        encode(registry.registry),
        headers={"Content-Type": content_type, "Cache-Control": "no-store"},
    )


routes = [Route("/metrics", metrics, methods=["GET"])]


class _QuietServer(uvicorn.Server):
    """A uvicorn server run as a task of the main one: the main server owns the
    signals (SIGTERM drains it; this one stops with the app's lifespan)."""

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class MetricsPort:
    """``/metrics`` alone on ``host:port``, plain HTTP, inside the app's lifespan."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        guard: Callable[[], AccessGuard],
        metrics: ProxyMetrics,
        exception_handlers: dict[type[Exception], ExceptionHandler],
    ) -> None:
        app = Starlette(routes=routes, exception_handlers=exception_handlers)
        app.state.metrics = metrics
        app.state.access_in_force = guard
        self._server = _QuietServer(
            uvicorn.Config(
                app, host=host, port=port, log_config=None, access_log=False, lifespan="off"
            )
        )
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen, or raise OSError (the port is taken): the app then does not start."""
        config = self._server.config
        # Bound here, not by uvicorn, which would exit the process on a taken port.
        sock = socket.create_server((config.host, config.port))
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        logger.info("metrics on http://%s:%d/metrics", config.host, config.port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
