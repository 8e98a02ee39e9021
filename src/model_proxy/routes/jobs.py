"""The jobs API (docs/jobs.md): ``POST /jobs``, ``GET /jobs[/{id}[/result|/events]]``,
``DELETE /jobs/{id}``; ``GET /jobs`` in a browser is a small HTML view.

Same access rules as the GET routes: the caller is authenticated, and may see or
touch a job only if it may call the job's model.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import orjson
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from model_proxy.access import AccessGuard
from model_proxy.access.guard import Caller
from model_proxy.audit import audit_record
from model_proxy.config import Level
from model_proxy.errors import (
    BadRequest,
    Conflict,
    ErrorCode,
    Forbidden,
    Gone,
    NotFound,
    shorten,
)
from model_proxy.inference import InferenceRequest, InferenceRunner
from model_proxy.jobs import Job, JobManager, JobSpec, JobStatus
from model_proxy.jobs.spec import MAX_BODY_BYTES
from model_proxy.routes.inference import build_request, check_level
from model_proxy.routes.job_answers import accepted, require_jobs
from model_proxy.routes.jobs_page import JOBS_PAGE, JOBS_PAGE_CSP
from model_proxy.routes.streaming import ResultResponse
from model_proxy.runtime.state import ProxyState
from model_proxy.web.compression import negotiate

_MAX_LIST = 1000
# An SSE comment this often keeps a load balancer's idle timeout from cutting the stream.
_KEEPALIVE_SECONDS = 15.0


def request_of(
    spec: JobSpec,
    state: ProxyState,
    *,
    encoding: str | None = None,
    if_none_match: str | None = None,
) -> InferenceRequest:
    """The request the GET route would have made for ``spec``: the same checks."""
    model = state.config.models.get(spec.model)
    if model is None:
        raise NotFound(
            f"model {shorten(spec.model)!r} is not in models.json", code=ErrorCode.UNKNOWN_MODEL
        )
    level = (
        Level.INSTANCE
        if spec.instance is not None
        else Level.SERIES
        if spec.series is not None
        else Level.STUDY
    )
    check_level(model, level)
    return build_request(
        state,
        model,
        level,
        (spec.study, spec.series, spec.instance),
        server_id=spec.server,
        filter_items=spec.data_filter_items(),
        caller=spec.caller,
        encoding=encoding,
        if_none_match=if_none_match,
    )


def _guard(request: Request) -> AccessGuard:
    guard: AccessGuard = request.state.proxy.access  # the rules of the leased state
    return guard


async def _caller(request: Request) -> Caller:
    return await _guard(request).authenticate(request.headers)


def _authorize(request: Request, caller: Caller, spec: JobSpec) -> None:
    """The GET routes' rules for the job's model and server (docs/security.md)."""
    guard = _guard(request)
    guard.authorize(caller, spec.model)
    server = spec.server
    if server is None:
        default = request.state.proxy.config.default_server()
        server = default.id if default is not None else None
    if server is not None:
        guard.authorize_server(caller, server, chosen=spec.server is not None)


async def _job_for(request: Request) -> tuple[JobManager, Job]:
    manager = require_jobs(request)
    caller = await _caller(request)
    job = await manager.get(request.path_params["job_id"])
    # The audit log (audit/record.py) records who looked at or cancelled which job's model.
    audit_record(request).fill(
        caller=caller.identity, model=job.spec.model, request=None, figures=None
    )
    _authorize(request, caller, job.spec)
    return manager, job


async def create_job(request: Request) -> Response:
    manager = require_jobs(request)
    caller: Caller | None = None
    spec: JobSpec | None = None
    inference: InferenceRequest | None = None
    try:
        caller = await _caller(request)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                break
        spec = JobSpec.from_body(bytes(body), caller.identity)
        state: ProxyState = request.state.proxy
        if spec.model not in state.config.models:
            raise NotFound(
                f"model {shorten(spec.model)!r} is not in models.json",
                code=ErrorCode.UNKNOWN_MODEL,
            )
        _guard(request).authorize(caller, spec.model)
        inference = request_of(spec, state)  # a 4xx now, not a failed job later
        _guard(request).authorize_server(
            caller, inference.server.id, chosen=spec.server is not None
        )
    finally:
        # Who asked for which model on which study, as for a GET (its figures are the job's).
        audit_record(request).fill(
            caller=caller.identity if caller else None,
            model=spec.model if spec else None,
            request=inference,
            figures=None,
        )
    job = await manager.submit(spec)
    return accepted(job)


async def list_jobs(request: Request) -> Response:
    manager = require_jobs(request)
    caller = await _caller(request)
    accept = request.headers.get("accept", "")
    if "text/html" in accept:
        headers = {"Cache-Control": "no-store", "Content-Security-Policy": JOBS_PAGE_CSP}
        return HTMLResponse(JOBS_PAGE, headers=headers)
    query = request.query_params
    status = query.get("status") or None
    if status is not None and status not in JobStatus.__members__.values():
        raise BadRequest(
            f"?status= must be one of {', '.join(JobStatus)}; got {shorten(status)!r}",
            code=ErrorCode.BAD_REQUEST,
        )
    limit_text = query.get("limit", "100")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= _MAX_LIST:
        raise BadRequest(
            f"?limit= must be a whole number from 1 to {_MAX_LIST}", code=ErrorCode.BAD_REQUEST
        )
    jobs = await manager.recent(
        JobStatus(status) if status else None, query.get("model") or None, int(limit_text)
    )
    visible = [job.to_json() for job in jobs if _may_see(request, caller, job)]
    return JSONResponse({"jobs": visible}, headers={"Cache-Control": "no-store"})


def _may_see(request: Request, caller: Caller, job: Job) -> bool:
    try:
        _authorize(request, caller, job.spec)
    except Forbidden:
        return False
    return True


async def get_job(request: Request) -> Response:
    _, job = await _job_for(request)
    return JSONResponse(job.to_json(), headers={"Cache-Control": "no-store"})


async def cancel_job(request: Request) -> Response:
    manager, job = await _job_for(request)
    job = await manager.cancel(job.id)
    return JSONResponse(job.to_json(), headers={"Cache-Control": "no-store"})


async def job_result(request: Request) -> Response:
    _, job = await _job_for(request)
    if job.status is not JobStatus.SUCCEEDED or job.result_key is None:
        if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            raise Conflict(
                f"job {job.id} ended {job.status.value}; it has no result",
                code=ErrorCode.JOB_FAILED,
            )
        raise Conflict(f"job {job.id} is {job.status.value}; its result is not ready")
    state: ProxyState = request.state.proxy
    inference = request_of(
        job.spec,
        state,
        encoding=negotiate(request.headers.get("accept-encoding")),
        if_none_match=request.headers.get("if-none-match"),
    )
    outcome = await InferenceRunner(inference, state, request.state.live).from_cache(
        job.result_key, from_redis=True
    )
    if outcome is None:
        raise Gone(
            f"the result of job {job.id} is no longer in the result cache (--cache-size);"
            " submit the job again"
        )
    if isinstance(outcome.body, bytes):
        return Response(outcome.body, outcome.status, headers=dict(outcome.headers))
    return ResultResponse(outcome.body, headers=outcome.headers, finalize=outcome.finalize)


async def job_events(request: Request) -> Response:
    """Server-Sent Events: ``progress`` while it changes, then one ``status`` at the end."""
    manager, job = await _job_for(request)
    interval: float = request.app.state.job_progress_interval
    return StreamingResponse(
        _events(manager, job, interval),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


async def _events(manager: JobManager, job: Job, interval: float) -> AsyncIterator[bytes]:
    last: bytes | None = None
    quiet_since = time.monotonic()
    while not job.status.finished:
        current = orjson.dumps(
            {"id": job.id, "status": job.status.value, "progress": job.progress_json()}
        )
        if current != last:
            last, quiet_since = current, time.monotonic()
            yield b"event: progress\ndata: " + current + b"\n\n"
        elif time.monotonic() - quiet_since >= _KEEPALIVE_SECONDS:
            quiet_since = time.monotonic()
            yield b": still running\n\n"
        job = await manager.follow(job, interval)
    yield b"event: status\ndata: " + orjson.dumps(job.to_json()) + b"\n\n"


async def jobs_collection(request: Request) -> Response:
    return await (create_job if request.method == "POST" else list_jobs)(request)


async def job_resource(request: Request) -> Response:
    return await (cancel_job if request.method == "DELETE" else get_job)(request)


# One route per path: a 405 then names every method the path takes (its Allow header).
routes = [
    Route("/jobs", jobs_collection, methods=["GET", "POST"]),
    Route("/jobs/{job_id:str}", job_resource, methods=["GET", "DELETE"]),
    Route("/jobs/{job_id:str}/result", job_result, methods=["GET"]),
    Route("/jobs/{job_id:str}/events", job_events, methods=["GET"]),
]
