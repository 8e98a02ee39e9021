"""The nine inference routes (docs/compatibility.md §3).

``/{segmentations|annotations|predictions}/{model}/studies/{study}
[/series/{series}[/instances/{instance}]]``: authenticate, parse and authorise
the request into an ``InferenceRequest``, hand it to an ``InferenceRunner``
(inference/) and serve the ``Outcome`` it returns; fill the audit record once.
A request for DICOM results (an ``Accept`` naming DICOM, ``?store=true``, a model
that always stores) goes through inference/dicom_outputs.py instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from model_proxy.access import AccessGuard
from model_proxy.access.guard import Caller
from model_proxy.audit import audit_record
from model_proxy.config import Level, ModelConfig, Task
from model_proxy.errors import BadRequest, ErrorCode, NotFound, shorten
from model_proxy.inference import InferenceRequest, InferenceRunner
from model_proxy.inference.dicom_outputs import (
    DicomOutputs,
    dicom_media,
    run_with_dicom_outputs,
)
from model_proxy.inference.store_target import dicom_outputs_for
from model_proxy.jobs import JobManager, JobSpec
from model_proxy.models.body import plan_body
from model_proxy.pacs.source import Target
from model_proxy.routes.job_answers import accepted, require_jobs
from model_proxy.routes.not_found import unknown_path
from model_proxy.routes.params import (
    filters_json,
    parse_data_filters,
    resolve_inputs,
    validate_uid,
)
from model_proxy.routes.streaming import ResultResponse
from model_proxy.runtime.state import ProxyState
from model_proxy.web.compression import negotiate

logger = logging.getLogger(__name__)

_FAMILIES = "{family:str}/{model_id:str}/studies/{study:str}"


def _level_of(params: dict[str, str]) -> Level:
    if "instance" in params:
        return Level.INSTANCE
    if "series" in params:
        return Level.SERIES
    return Level.STUDY


def _check_route_fits_model(family: str, model: ModelConfig, level: Level) -> None:
    try:
        task = Task.from_route_family(family)
    except ValueError:
        raise unknown_path() from None
    if task is not model.task:
        supported = ", ".join(level.value for level in model.supports)
        raise BadRequest(
            f"model {model.id} performs {model.task.value}; call it under"
            f" /{model.task.route_family}/ (it supports {supported})",
            code=ErrorCode.WRONG_TASK,
        )
    check_level(model, level)


def check_level(model: ModelConfig, level: Level) -> None:
    supported = ", ".join(level.value for level in model.supports)
    if level not in model.supports:
        raise BadRequest(
            f"model {model.id} does not support {level.value} requests; it supports {supported}",
            code=ErrorCode.UNSUPPORTED_LEVEL,
        )


async def infer(request: Request) -> Response:
    if request.method != "GET":
        # Starlette answers HEAD on GET routes; here it would run a whole inference.
        raise HTTPException(405, headers={"Allow": "GET"})
    state: ProxyState = request.state.proxy  # leased by reload.LeaseMiddleware
    guard: AccessGuard = state.access  # the rules of the state this request leased
    caller: Caller | None = None
    model: ModelConfig | None = None
    inference: InferenceRequest | None = None
    runner: InferenceRunner | None = None
    try:
        caller = await guard.authenticate(request.headers)
        model = _model_of(request, state)
        guard.authorize(caller, model.id)
        inference = _parse(request, state, caller, model)
        guard.authorize_server(caller, inference.server.id, chosen="server" in request.query_params)
        if _prefers_async(request):
            return await _respond_async(request, inference)
        outputs = _dicom_outputs(request, state, model, inference)
        if outputs.wanted:
            # The JSON is converted whole: read it uncompressed, never a 304.
            inference = replace(inference, encoding=None, if_none_match=None)
        runner = InferenceRunner(inference, state, request.state.live)
        if outputs.wanted:
            outcome = await run_with_dicom_outputs(runner, inference, state, outputs)
        else:
            outcome = await runner.run()
    finally:
        # The audit record, once: whatever the request established before it ended.
        audit_record(request).fill(
            caller=caller.identity if caller else None,
            model=model.id if model else None,
            request=inference,
            figures=runner.figures if runner else None,
        )
    if isinstance(outcome.body, bytes):
        return Response(outcome.body, outcome.status, headers=dict(outcome.headers))
    return ResultResponse(outcome.body, headers=outcome.headers, finalize=outcome.finalize)


def _model_of(request: Request, state: ProxyState) -> ModelConfig:
    model_id = request.path_params["model_id"]
    if request.path_params["family"] not in {task.route_family for task in Task}:
        raise unknown_path()
    model = state.config.models.get(model_id)
    if model is None:
        raise NotFound(
            f"model {shorten(model_id)!r} is not in models.json", code=ErrorCode.UNKNOWN_MODEL
        )
    return model


def _parse(
    request: Request, state: ProxyState, caller: Caller, model: ModelConfig
) -> InferenceRequest:
    """Everything else the request says, checked: the level, UIDs, server, inputs."""
    params: dict[str, str] = dict(request.path_params)
    level = _level_of(params)
    _check_route_fits_model(params["family"], model, level)
    server_param = request.query_params.getlist("server")
    if len(server_param) > 1:
        raise BadRequest("?server= is given more than once", code=ErrorCode.BAD_REQUEST)
    return build_request(
        state,
        model,
        level,
        (params["study"], params.get("series"), params.get("instance")),
        server_id=server_param[0] if server_param else None,
        filter_items=request.query_params.multi_items(),
        caller=caller.identity,
        encoding=negotiate(request.headers.get("accept-encoding")),
        if_none_match=request.headers.get("if-none-match"),
    )


def build_request(
    state: ProxyState,
    model: ModelConfig,
    level: Level,
    uids: tuple[str, str | None, str | None],
    *,
    server_id: str | None,
    filter_items: Sequence[tuple[str, str]],
    caller: str | None,
    encoding: str | None = None,
    if_none_match: str | None = None,
) -> InferenceRequest:
    """The request's UIDs, server and inputs checked (a GET route's or a job's)."""
    study, series, instance = uids
    target = Target(
        validate_uid(study, "study UID"),
        validate_uid(series, "series UID") if series is not None else None,
        validate_uid(instance, "SOP instance UID") if instance is not None else None,
    )
    inputs = resolve_inputs(model, level, parse_data_filters(filter_items))
    server, _ = state.source_for(server_id)
    return InferenceRequest(
        caller=caller,
        model=model,
        server=server,
        level=level,
        target=target,
        inputs=inputs,
        plan=tuple(plan_body(level, target, inputs, send_result_objects=model.send_result_objects)),
        encoding=encoding,
        if_none_match=if_none_match,
    )


def _prefers_async(request: Request) -> bool:
    """RFC 7240: ``Prefer: respond-async`` (among other preferences, any case)."""
    for header in request.headers.getlist("prefer"):
        for preference in header.split(","):
            if preference.split(";", 1)[0].strip().lower() == "respond-async":
                return True
    return False


async def _respond_async(request: Request, inference: InferenceRequest) -> Response:
    """202 and a job instead of the result: the request was checked like any other."""
    manager: JobManager = require_jobs(request)
    target = inference.target
    filters = parse_data_filters(request.query_params.multi_items())
    job = await manager.submit(
        JobSpec(
            model=inference.model.id,
            study=target.study,
            series=target.series,
            instance=target.instance,
            server=request.query_params.get("server"),
            data_filters=None if filters is None else filters_json(filters),
            # ?store=true goes with the job (its result is the JSON; docs/jobs.md).
            store=_store_asked(request),
            caller=inference.caller,
        )
    )
    return accepted(job, preference_applied=True)


def _dicom_outputs(
    request: Request, state: ProxyState, model: ModelConfig, inference: InferenceRequest
) -> DicomOutputs:
    """What the request wants as DICOM: ``Accept``, ``?store=``, the model's ``"store"``."""
    return dicom_outputs_for(
        state,
        model,
        inference.server,
        media=dicom_media(request.headers.get("accept")),
        store_asked=_store_asked(request),
    )


def _store_asked(request: Request) -> bool:
    """``?store=true``; ``false`` or none is False, anything else a 400."""
    store = request.query_params.getlist("store")
    if len(store) > 1 or (store and store[0] not in ("true", "false")):
        raise BadRequest(
            "?store= takes true or false, once (true stores the result in the PACS as DICOM)",
            code=ErrorCode.BAD_REQUEST,
        )
    return store == ["true"]


# Every inference route starts with one of these (the audit log covers them all).
prefixes = tuple(f"/{task.route_family}/" for task in Task)

routes = [
    Route(f"/{_FAMILIES}", infer, methods=["GET"]),
    Route(f"/{_FAMILIES}/series/{{series:str}}", infer, methods=["GET"]),
    Route(
        f"/{_FAMILIES}/series/{{series:str}}/instances/{{instance:str}}",
        infer,
        methods=["GET"],
    ),
]
