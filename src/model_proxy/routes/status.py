"""``/status``: every server and model probed through its statusUri (docs/compatibility.md §8),
with what an operator watches: names, traffic per model over the last 5 and 60 minutes,
breakers, PACS token expiry, the last error per upstream, capacity, the result cache
and the jobs queue (docs/operations.md, "The status page").

Present only when ZHIVA_SHOW_STATUS_PAGE=true. HTML for a browser (``status_page.py``
draws this same report), JSON for ``Accept: application/json``:
``{"servers": {uuid: {"ok": bool, ...}}, "models": {uuid: {"ok": bool, ...}},
"process": {...}, "capacity": {...}, "cache": {...}, "jobs"?: {...}, "watcher"?: {...}}``
(jobs and the prefetch watcher: docs/jobs.md).

A section of the report is one function in ``_SECTIONS`` (and one in status_page.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from model_proxy import __version__
from model_proxy.errors import BadRequest, NotFound, redact_urls, shorten
from model_proxy.metrics.recent import WINDOWS_MINUTES, RecentTraffic
from model_proxy.pacs.auth.flows import TOKEN_AUTH_TYPES
from model_proxy.routes.not_found import STATUS_PAGE_OFF
from model_proxy.routes.status_page import REFRESH_SECONDS, render_html
from model_proxy.runtime.state import ProxyState
from model_proxy.upstream.breaker import CircuitBreaker
from model_proxy.upstream.probe import ProbeResult

# DICOM UIDs (dotted digits): an upstream's message may quote the study it failed on.
_UID = re.compile(r"\b\d+(?:\.\d+){3,}\b")


async def collect_status(state: ProxyState) -> dict[str, dict[str, Any]]:
    """Probe everything concurrently, each probe with its upstream's own timeouts, or
    reuse the state's last round while it is fresh (``--status-cache``)."""
    server_ids = list(state.config.servers)
    model_ids = list(state.config.models)

    async def probe_all() -> list[ProbeResult]:
        return list(
            await asyncio.gather(
                *(state.sources[i].probe() for i in server_ids),
                *(state.models[i].probe() for i in model_ids),
            )
        )

    results, age = await state.probe_rounds.results(probe_all)
    servers = {
        server_id: _entry(result, state.config.servers[server_id].status_uri, kind="server")
        | {
            "name": state.config.servers[server_id].name,
            "uri": redact_urls(state.config.servers[server_id].uri),
            "isDefault": _is_default(state, server_id),
        }
        | _breaker_entry(state.breaker_of_server(server_id))
        | _store_entry(state, server_id)
        | _token_entry(state, server_id)
        for server_id, result in zip(server_ids, results[: len(server_ids)], strict=True)
    }
    models = {
        model_id: _entry(result, state.config.models[model_id].status_uri, kind="model")
        | {
            "name": state.config.models[model_id].name,
            "task": state.config.models[model_id].task.value,
            "supports": [level.value for level in state.config.models[model_id].supports],
        }
        | _breaker_entry(state.models[model_id].breaker)
        for model_id, result in zip(model_ids, results[len(server_ids) :], strict=True)
    }
    # Live asyncio tasks: flat under load, so a leak shows (the leak test reads it).
    process = {"asyncioTasks": len(asyncio.all_tasks()), "probedSecondsAgo": round(age, 1)}
    return {"servers": servers, "models": models, "process": process}


def public_message(message: str) -> str:
    """An upstream's error as the page may show it: no password in a URL, no DICOM UID
    (which names a patient's study), one line of at most 300 characters."""
    return shorten(_UID.sub("<uid>", redact_urls(" ".join(message.split()))), 300)


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def _breaker_entry(breaker: CircuitBreaker | None) -> dict[str, Any]:
    if breaker is None:
        return {}
    snapshot = breaker.snapshot()
    if snapshot.get("lastFailure"):
        snapshot["lastFailure"] = public_message(snapshot["lastFailure"])
    entry: dict[str, Any] = {"breaker": snapshot}
    if breaker.last_failure is not None and breaker.last_failure_at is not None:
        entry["lastError"] = {
            "at": _when(breaker.last_failure_at),
            "message": public_message(breaker.last_failure),
        }
    return entry


def _store_entry(state: ProxyState, server_id: str) -> dict[str, Any]:
    failure = state.store_failures.get(server_id)
    return {} if failure is None else {"lastStoreFailure": failure}


def _token_entry(state: ProxyState, server_id: str) -> dict[str, Any]:
    """The access token of a token, zhivaAuth or oauth2 server: ``state`` is ``valid``,
    ``expired``, ``failing`` (renewals fail: since when, why) or ``none`` (no request
    has needed one since the start or the last reload)."""
    if state.config.servers[server_id].auth_type not in TOKEN_AUTH_TYPES:
        return {}
    session = state.auth.existing_session(server_id)
    token = session.current if session is not None else None
    expires_at = token.expires_at if token is not None else None
    entry: dict[str, Any] = {"expiresAt": _when(expires_at) if expires_at else None}
    if session is not None and session.failing_since is not None:
        entry["state"] = "failing"
        entry["failingSince"] = _when(session.failing_since)
        entry["lastFailure"] = public_message(session.last_failure or "")
    elif token is None:
        entry["state"] = "none"
    else:
        entry["state"] = "expired" if token.is_expired(time.time()) else "valid"
    return {"token": entry}


def _is_default(state: ProxyState, server_id: str) -> bool:
    default = state.config.default_server()
    return default is not None and default.id == server_id


def _entry(result: ProbeResult, status_uri: str | None, *, kind: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "ok": result.ok,
        "latencyMs": result.latency_ms,
        "statusUri": redact_urls(status_uri) if status_uri else None,
        "detail": result.detail,
    }
    if result.http_status is not None:
        entry["httpStatus"] = result.http_status
    if not result.ok:
        entry["error"] = result.detail
    return entry


# --- sections beyond servers and models: (key, function); None leaves the key out ------

Section = Callable[[Starlette, ProxyState], Awaitable[dict[str, Any] | None]]


async def _capacity_section(app: Starlette, state: ProxyState) -> dict[str, Any]:
    admission = state.capacity.admission
    return {
        "memoryBudgetBytes": admission.budget.total,
        "memoryBudgetUsedBytes": admission.budget.used,
        "inferencesRunning": admission.running,
        "inferencesMax": admission.max_concurrent,
    }


async def _cache_section(app: Starlette, state: ProxyState) -> dict[str, Any]:
    store = state.result_cache.store
    section: dict[str, Any] = {
        "enabled": state.result_cache.enabled,
        "sizeBytes": store.total_bytes,
        "maxBytes": store.max_bytes,
    }
    recent: RecentTraffic = app.state.recent_traffic
    for minutes in WINDOWS_MINUTES:
        figures = [recent.of_model(model_id)[f"{minutes}m"] for model_id in state.config.models]
        lookups = sum(figure.cache_lookups for figure in figures)
        hits = sum(figure.cache_hits for figure in figures)
        section[f"{minutes}m"] = {
            "lookups": lookups,
            "hits": hits,
            "hitRate": round(hits / lookups, 4) if lookups else None,
        }
    return section


async def _jobs_section(app: Starlette, state: ProxyState) -> dict[str, Any] | None:
    return None if app.state.jobs is None else dict(await app.state.jobs.counts())


async def _watcher_section(app: Starlette, state: ProxyState) -> dict[str, Any] | None:
    watcher = getattr(app.state, "watcher", None)
    return None if watcher is None else dict(watcher.status())


async def _redis_section(app: Starlette, state: ProxyState) -> dict[str, Any] | None:
    redis = getattr(app.state, "redis", None)
    if redis is None:
        return None
    await redis.ping()  # --redis: reachable now? (docs/replicas.md, "Redis down")
    snapshot: dict[str, Any] = redis.health.snapshot()
    return snapshot


_SECTIONS: list[tuple[str, Section]] = [
    ("capacity", _capacity_section),
    ("cache", _cache_section),
    ("jobs", _jobs_section),
    ("watcher", _watcher_section),
    ("redis", _redis_section),
]


async def build_report(app: Starlette, state: ProxyState) -> dict[str, dict[str, Any]]:
    """The whole /status report: probes, then traffic, process figures and sections."""
    report = await collect_status(state)
    recent: RecentTraffic = app.state.recent_traffic
    recent.keep_only(state.config.models)
    for model_id, entry in report["models"].items():
        windows = recent.of_model(model_id)
        entry["traffic"] = {key: figures.to_json() for key, figures in windows.items()}
    started_at, started = app.state.started
    report["process"] |= {
        "version": __version__,
        "startedAt": _when(started_at),
        "uptimeSeconds": round(time.monotonic() - started),
    }
    for key, section in _SECTIONS:
        value = await section(app, state)
        if value is not None:
            report[key] = value
    return report


async def status(request: Request) -> Response:
    state: ProxyState = request.state.proxy  # leased by reload.LeaseMiddleware
    if not state.settings.show_status_page:
        raise NotFound(STATUS_PAGE_OFF)
    # With client auth on, the page (it names every PACS and model) needs a caller too.
    caller = await state.access.authenticate(request.headers)
    state.access.authorize_monitoring(caller)
    refresh = _refresh_seconds(request.query_params.get("refresh"))
    report = await build_report(request.app, state)
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/html" not in accept:
        return JSONResponse(report, headers={"Cache-Control": "no-store"})
    return HTMLResponse(render_html(report, refresh), headers={"Cache-Control": "no-store"})


def _refresh_seconds(value: str | None) -> int:
    """``?refresh=N``: the page reloads every N seconds (0: never; default 15)."""
    if value is None:
        return REFRESH_SECONDS
    if not value.isdigit() or not 0 <= int(value) <= _MAX_REFRESH:
        raise BadRequest(
            f"?refresh= takes whole seconds from 0 (no auto-refresh) to {_MAX_REFRESH},"
            f" got {shorten(value, 20)!r}"
        )
    return int(value)


_MAX_REFRESH = 3600


routes = [Route("/status", status, methods=["GET"])]
