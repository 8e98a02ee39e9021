"""What the jobs routes and ``Prefer: respond-async`` share: the manager, the 202."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from model_proxy.errors import ErrorCode, NotFound
from model_proxy.jobs import Job, JobManager


def require_jobs(request: Request) -> JobManager:
    """The app's job manager; none when the result cache is off (it holds results)."""
    manager: JobManager | None = request.app.state.jobs
    if manager is None:
        raise NotFound(
            "jobs are off: they keep their results in the result cache, which this proxy"
            " runs without (--cache-size 0)",
            code=ErrorCode.JOBS_UNAVAILABLE,
        )
    return manager


def accepted(job: Job, *, preference_applied: bool = False) -> JSONResponse:
    """202 with the job's links and ``Location`` (RFC 7240 ``Preference-Applied``)."""
    headers = {"Location": f"/jobs/{job.id}", "Cache-Control": "no-store"}
    if preference_applied:
        headers["Preference-Applied"] = "respond-async"
    body = job.to_json()
    return JSONResponse(
        {"id": body["id"], "status": body["status"], "links": body["links"]},
        status_code=202,
        headers=headers,
    )
