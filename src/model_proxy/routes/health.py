"""Health for people and orchestrators: ``/health`` (the original's), ``/livez`` and
``/readyz`` (Docker and Kubernetes probes, docs/operations.md).

``/livez`` says the process serves HTTP: restart it when this fails. ``/readyz`` says
new requests would be served now: the config is loaded, the server is not draining
after SIGTERM, admission has a free slot and a memory window, and, with
``--ready-requires-upstreams``, every PACS and model answers its probe. A load
balancer sends traffic elsewhere while it fails; nothing should restart the process
for it. Neither needs credentials nor names an upstream's address.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from model_proxy import __version__
from model_proxy.routes.status import collect_status
from model_proxy.runtime.state import ProxyState
from model_proxy.upstream.breaker import BreakerState

_NO_STORE = {"Cache-Control": "no-store"}


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__})


async def livez(request: Request) -> Response:
    return JSONResponse({"status": "ok"}, headers=_NO_STORE)


async def readyz(request: Request) -> Response:
    state: ProxyState | None = getattr(request.app.state, "proxy", None)
    is_draining: Callable[[], bool] = getattr(request.app.state, "is_draining", lambda: False)
    checks: dict[str, Any] = {"config": state is not None, "draining": is_draining()}
    problems = []
    if state is None:
        problems.append("the configuration is not loaded")
    if checks["draining"]:
        problems.append("shutting down: draining the requests in flight")
    if state is not None:
        admission = state.capacity.admission
        saturated = (
            admission.running >= admission.max_concurrent
            or admission.budget.available < admission.window
        )
        checks["admission"] = {
            "running": admission.running,
            "max": admission.max_concurrent,
            "saturated": saturated,
        }
        if saturated:
            problems.append("admission is saturated: a new inference would get 503")
        if state.settings.ready_requires_upstreams:
            down = await _upstreams_down(state)
            checks["upstreamsDown"] = down
            if down:
                problems.append(f"{len(down)} upstream(s) down: {', '.join(down)}")
    body: dict[str, Any] = {"status": "ready" if not problems else "not ready", "checks": checks}
    if problems:
        body["problems"] = problems
    return JSONResponse(body, status_code=200 if not problems else 503, headers=_NO_STORE)


async def _upstreams_down(state: ProxyState) -> list[str]:
    """Config UUIDs of the servers and models that fail their probe or whose breaker
    is open."""
    report = await collect_status(state)
    down = []
    for kind in ("servers", "models"):
        for uuid, entry in report[kind].items():
            breaker = entry.get("breaker", {}).get("state")
            if not entry["ok"] or breaker == BreakerState.OPEN.value:
                down.append(uuid)
    return down


routes = [
    Route("/health", health, methods=["GET"]),
    Route("/livez", livez, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
