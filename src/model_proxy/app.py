"""The ASGI application: routes, lifespan and the one place errors become responses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Match
from starlette.types import ExceptionHandler

from model_proxy import __version__
from model_proxy.access import AccessPolicy
from model_proxy.access.guard import JWKS_TIMEOUTS
from model_proxy.access.jwks import JwksCaches
from model_proxy.access.posture import log_posture
from model_proxy.audit import REQUEST_ID_HEADER, AuditMiddleware, AuditWriter, audit_record
from model_proxy.audit.request_log import log_request
from model_proxy.cache import ResultCache
from model_proxy.cache.shared_results import SharedResults, SharedResultsPolicy
from model_proxy.config import ProxyConfig
from model_proxy.errors import ErrorCode, ProxyError
from model_proxy.inference import output_folders
from model_proxy.jobs import JobManager, JobPolicy, JobStore
from model_proxy.jobs.manager import JobHooks
from model_proxy.jobs.queue import JobQueue, LocalJobQueue
from model_proxy.jobs.redis_queue import RedisJobQueue, SharedJobsPolicy
from model_proxy.jobs.store import JOB_STORE_FILE
from model_proxy.metrics import ProxyMetrics
from model_proxy.metrics import endpoint as metrics_endpoint
from model_proxy.metrics.collector import JobsCollector, StateCollector
from model_proxy.metrics.endpoint import MetricsPort
from model_proxy.metrics.recent import RecentTraffic
from model_proxy.metrics.redis_collector import RedisCollector
from model_proxy.pacs.auth.shared_tokens import SharedTokenStore
from model_proxy.prefetch import WatcherRole, start_watcher
from model_proxy.prefetch.lease import RedisWatcherLease
from model_proxy.routes import health, inference, jobs, openapi, status
from model_proxy.routes.not_found import UNKNOWN_PATH
from model_proxy.runtime.capacity import Capacity
from model_proxy.runtime.reload import LeaseMiddleware, LiveState, Reloader
from model_proxy.runtime.state import ProxyState
from model_proxy.settings import Settings
from model_proxy.shared import RedisLink
from model_proxy.web.security_headers import SecurityHeadersMiddleware

logger = logging.getLogger(__name__)


def create_app(
    settings: Settings, config: ProxyConfig, access: AccessPolicy | None = None
) -> Starlette:
    """The proxy for an already validated ``config`` (the CLI loads and checks it).

    ``access`` (access.json) turns on client authentication; None leaves it open.
    """
    audit = AuditWriter(settings.audit_log) if settings.audit_log else None

    live = LiveState()
    metrics = ProxyMetrics()
    recent_traffic = RecentTraffic()  # /status's last 5 and 60 minutes per model
    metrics.registry.register(StateCollector(lambda: getattr(app.state, "proxy", None)))
    metrics.registry.register(
        JobsCollector(
            lambda: (
                jobs_manager.active_by_model()
                if (jobs_manager := getattr(app.state, "jobs", None)) is not None
                else None
            ),
            lambda: getattr(app.state, "proxy", None),
        )
    )
    metrics.registry.register(RedisCollector(lambda: getattr(app.state, "redis", None)))
    metrics_port = (
        MetricsPort(
            settings.metrics_host,
            settings.metrics_port,
            guard=lambda: app.state.proxy.access,
            metrics=metrics,
            exception_handlers=_EXCEPTION_HANDLERS,
        )
        if settings.metrics_port is not None
        else None
    )

    def put_in_force(state: ProxyState) -> None:
        app.state.proxy = state  # the state in force; requests use their leased one
        if audit is not None:
            audit.reopen()  # a SIGHUP reload also reopens the audit file (logrotate)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # DICOM results a killed process left are removed before the first request.
        await anyio.to_thread.run_sync(output_folders.claim_at_start, settings.data_dir)
        capacity = Capacity.create(settings, metrics)
        jwks_caches = JwksCaches(JWKS_TIMEOUTS)
        # Before the first state: its PACS sessions keep their tokens in Redis.
        app.state.redis = await _connect_redis(settings)
        state = ProxyState.build(
            settings,
            config,
            capacity,
            access=access,
            jwks_caches=jwks_caches,
            shared_tokens=_shared_tokens(settings, app.state.redis),
        )
        await live.replace(state)
        put_in_force(state)
        state.start_indexing()
        reloader = Reloader(settings, live, on_state=put_in_force)
        reloader.start(settings.watch_config)
        app.state.reloader = reloader
        app.state.live = live  # the states in force and retired (tests look at them)
        app.state.audit = audit  # audit.reopen() after an external log rotation
        if audit is not None:
            audit.start()
        redis_watch = _share_results(app.state.redis, state.result_cache, settings)
        app.state.jobs = await _start_jobs(settings, state, live, metrics, app.state.redis)
        app.state.job_progress_interval = settings.job_progress_interval
        app.state.watcher = await start_watcher(
            settings,
            live,
            app.state.jobs,
            settings.data_dir / JOB_STORE_FILE,
            metrics.prefetch_job,
            role=_watcher_role(settings, app.state.redis),
            redis=app.state.redis,
        )
        if metrics_port is not None:
            await metrics_port.start()
        log_posture(
            cors_origins=settings.cors_origins,
            auth_source=access.source if access else None,
            audit_path=settings.audit_log,
        )
        logger.info(
            "model-proxy %s ready: %d servers, %d models, status page %s",
            __version__,
            len(config.servers),
            len(config.models),
            "on" if settings.show_status_page else "off",
        )
        try:
            yield
        finally:
            if app.state.watcher is not None:
                await app.state.watcher.aclose()  # before the jobs it submits to
            if app.state.jobs is not None:
                await app.state.jobs.aclose()  # running jobs go back to the queue
            if redis_watch is not None:
                redis_watch.cancel()
                state.result_cache.shared_results = None
            if app.state.redis is not None:
                await app.state.redis.aclose()
            if metrics_port is not None:
                await metrics_port.stop()
            await reloader.stop()
            await live.aclose()
            capacity.close()
            await jwks_caches.aclose()
            if audit is not None:
                await anyio.to_thread.run_sync(audit.close)
            await anyio.to_thread.run_sync(output_folders.release, settings.data_dir)
            logger.info("model-proxy stopped; upstream clients closed")

    app = Starlette(
        routes=[
            *health.routes,
            *metrics_endpoint.routes,
            *status.routes,
            *openapi.routes,
            *jobs.routes,
            *inference.routes,
        ],
        middleware=[
            Middleware(SecurityHeadersMiddleware),
            Middleware(LeaseMiddleware, live=live),
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["*"],
                expose_headers=[
                    "Content-Length",
                    "Content-Type",
                    "ETag",
                    "Location",
                    "Preference-Applied",
                    REQUEST_ID_HEADER,
                ],
                max_age=600,
            ),
            Middleware(
                AuditMiddleware,
                writer=audit,
                prefixes=(*inference.prefixes, "/jobs"),
                observers=[metrics.observe_request, recent_traffic.observe_request, log_request],
            ),
        ],
        exception_handlers=_EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.recent_traffic = recent_traffic
    app.state.started = (time.time(), time.monotonic())  # /status: started at, uptime
    app.state.access_in_force = lambda: app.state.proxy.access
    # Replaced by cli/serve.py with uvicorn's view: /readyz fails while it drains.
    app.state.is_draining = lambda: False
    # Starlette's own slash redirect builds an absolute URL from the Host header.
    app.router.redirect_slashes = False
    return app


async def _connect_redis(settings: Settings) -> RedisLink | None:
    """The Redis replicas share (--redis), or None. Redis down at start is a warning,
    not a failed start: requests are served from the replica's own state meanwhile."""
    if settings.redis is None:
        return None
    link = RedisLink.connect(settings.redis)
    if await link.ping():
        logger.info("shared state: Redis at %s", link.where)
    return link


def _shared_tokens(settings: Settings, link: RedisLink | None) -> SharedTokenStore | None:
    """The PACS tokens in Redis (--redis), encrypted with --redis-key-file."""
    if link is None or settings.redis is None:
        return None
    return SharedTokenStore.from_settings(link, settings.redis, settings.data_dir)


def _watcher_role(settings: Settings, redis: RedisLink | None) -> WatcherRole | None:
    """With --redis one replica polls the PACS, the one holding the lease; it renews it
    at each poll, so a lease of three intervals outlives a slow poll or two."""
    if redis is None:
        return None
    return RedisWatcherLease(redis, lease_seconds=max(3 * settings.watch_interval, 10.0))


def _share_results(
    link: RedisLink | None, cache: ResultCache, settings: Settings
) -> asyncio.Task[None] | None:
    """With --redis: the result cache shared through it (docs/replicas.md, "Results"),
    and a ping every --redis-check-interval, so that a Redis back after a failure is
    used again (and shown so) without waiting for a request to try it."""
    if link is None or settings.redis is None:
        return None
    watch = asyncio.create_task(_watch(link, settings.redis_check_interval))
    if cache.enabled and settings.redis_max_entry_bytes > 0:
        policy = SharedResultsPolicy(
            max_entry_bytes=settings.redis_max_entry_bytes,
            ttl=settings.redis_result_ttl,
            lock_lease=settings.redis_lock_lease,
            wait_limit=settings.model_timeouts.idle,
            call_timeout=2 * settings.redis.timeout,
        )
        cache.shared_results = SharedResults(
            link.client, link.health, policy, prefix=link.key("results") + ":"
        )
    return watch


async def _watch(link: RedisLink, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await link.ping()  # updates link.health


async def _start_jobs(
    settings: Settings,
    state: ProxyState,
    live: LiveState,
    metrics: ProxyMetrics,
    link: RedisLink | None,
) -> JobManager | None:
    """The job manager: on <data-dir>/jobs.sqlite, or with --redis on the queue the
    replicas share (its jobs.sqlite is moved in); None without the result cache, which
    holds job results (the jobs routes then answer 404 jobs_unavailable)."""
    if not state.result_cache.enabled:
        logger.info("jobs are off: the result cache is off (--cache-size 0)")
        return None
    store = await anyio.to_thread.run_sync(JobStore, settings.data_dir / JOB_STORE_FILE)
    queue: JobQueue
    if link is None:
        queue = LocalJobQueue(store, settings.job_retention)
    else:
        policy = SharedJobsPolicy(lease=settings.job_lease, retention=settings.job_retention)
        queue = RedisJobQueue(link, policy, local=store)
    manager = JobManager(
        queue,
        live,
        jobs.request_of,
        JobPolicy(
            max_running=settings.max_running_jobs,
            retry_interval=settings.job_retry_interval,
        ),
        JobHooks(metrics.job_started, metrics.job_finished, metrics.job_stored),
    )
    await manager.start()
    return manager


async def handle_proxy_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProxyError)
    # Logged on the request's one line (audit/request_log.py).
    record = audit_record(request)
    record.code, record.error = exc.code, exc.message
    return JSONResponse(exc.to_json(), status_code=exc.status_code, headers=exc.headers())


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        redirect = _without_trailing_slash(request)
        if redirect is not None:
            return redirect
        message, code = UNKNOWN_PATH, ErrorCode.NOT_FOUND
    elif exc.status_code == 405:
        # Starlette lists HEAD with GET; the inference routes refuse HEAD (a whole inference).
        allow = (exc.headers or {}).get("Allow", "GET").split(", ")
        allowed = " or ".join(sorted(method for method in allow if method != "HEAD"))
        message = f"{request.method} is not allowed here; use {allowed}"
        code = ErrorCode.METHOD_NOT_ALLOWED
    else:
        message, code = str(exc.detail), ErrorCode.HTTP_ERROR
    record = audit_record(request)
    record.code, record.error = code, message
    return JSONResponse(
        {"message": message, "code": code}, status_code=exc.status_code, headers=exc.headers
    )


def _without_trailing_slash(request: Request) -> Response | None:
    """``/status/`` -> 307 to ``/status``: a relative Location, never one built from the
    Host header (which the caller chooses), in place of Starlette's slash redirect."""
    path = request.url.path
    if not path.endswith("/") or path.startswith("//"):
        return None
    scope = {**request.scope, "path": path.rstrip("/")}
    if not any(route.matches(scope)[0] is not Match.NONE for route in request.app.routes):
        return None
    query = request.url.query
    location = scope["path"] + (f"?{query}" if query else "")
    return RedirectResponse(location, status_code=307)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log only; the caller gets no internals.
    logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"message": "internal error in model-proxy; see its log", "code": ErrorCode.INTERNAL_ERROR},
        status_code=500,
    )


_EXCEPTION_HANDLERS: dict[type[Exception], ExceptionHandler] = {
    ProxyError: handle_proxy_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
