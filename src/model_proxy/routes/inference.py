"""The nine inference routes (docs/compatibility.md §3).

``/{segmentations|annotations|predictions}/{model}/studies/{study}
[/series/{series}[/instances/{instance}]]``: check the request, stream the
data from the PACS into the model, return the model's result.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from model_proxy.access import AccessGuard
from model_proxy.audit import audit_record
from model_proxy.cache import data_fingerprint, request_key
from model_proxy.config import Level, ModelConfig, Task
from model_proxy.errors import BadRequest, ErrorCode, NotFound, shorten
from model_proxy.models.body import plan_body
from model_proxy.models.pipeline import BodyPipeline
from model_proxy.models.result_stream import ResultStream
from model_proxy.pacs.source import Target
from model_proxy.routes.params import parse_data_filters, resolve_inputs, validate_uid
from model_proxy.routes.results import Inference, respond
from model_proxy.runtime.reload import LiveState
from model_proxy.runtime.state import ProxyState

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
        raise NotFound("Not found") from None
    supported = ", ".join(level.value for level in model.supports)
    if task is not model.task:
        raise BadRequest(
            f"model {model.id} performs {model.task.value}; call it under"
            f" /{model.task.route_family}/ (it supports {supported})",
            code=ErrorCode.WRONG_TASK,
        )
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
    live: LiveState = request.state.live
    guard: AccessGuard = request.app.state.access
    record = audit_record(request)
    caller = await guard.authenticate(request.headers)
    record.caller = caller.identity
    params: dict[str, str] = dict(request.path_params)
    level = _level_of(params)
    family = params["family"]
    if family not in {task.route_family for task in Task}:
        raise NotFound("Not found")
    model = state.config.models.get(params["model_id"])
    if model is None:
        raise NotFound(
            f"model {shorten(params['model_id'])!r} is not in models.json",
            code=ErrorCode.UNKNOWN_MODEL,
        )
    record.model = model.id
    guard.authorize(caller, model.id)
    _check_route_fits_model(family, model, level)
    target = Target(
        validate_uid(params["study"], "study UID"),
        validate_uid(params["series"], "series UID") if "series" in params else None,
        validate_uid(params["instance"], "SOP instance UID") if "instance" in params else None,
    )
    record.level, record.study = level.value, target.study
    record.series, record.instance = target.series, target.instance
    server_param = request.query_params.getlist("server")
    if len(server_param) > 1:
        raise BadRequest("?server= is given more than once", code=ErrorCode.BAD_REQUEST)
    inputs = resolve_inputs(model, level, parse_data_filters(request.query_params.multi_items()))
    record.set_inputs(inputs)
    server, source = state.source_for(server_param[0] if server_param else None)
    record.server = server.id
    client = state.models[model.id]

    plan = plan_body(level, target, inputs)
    writer: BodyPipeline | None = None

    @asynccontextmanager
    async def open_result() -> AsyncIterator[ResultStream]:
        nonlocal writer
        record.model_called = True
        # Admitted only when the model is really called: a slot and a memory window.
        # The call holds its own lease on the state whose clients it uses: coalesced,
        # it may outlive this request while other viewers read its result.
        try:
            async with live.hold(state), state.capacity.admission.admit() as memory:
                writer = state.capacity.body_pipeline(plan, source, model.input, memory)
                async with (
                    writer,
                    client.open_result(writer.chunks(), writer.content_type) as result,
                ):
                    yield result
        finally:
            if writer is not None:
                record.instances_in, record.dicom_bytes_in = writer.instances_sent, writer.bytes_in

    def describe() -> str:
        sent = (writer.instances_sent, writer.bytes_in) if writer else (0, 0)
        return (
            f"model={model.id} server={server.id} level={level.value}"
            f" instances={sent[0]} dicom_bytes={sent[1]}"
        )

    inference = Inference(
        open_result,
        describe,
        request_key=request_key(model, server, plan),
        fingerprint=partial(data_fingerprint, source, plan),
    )
    return await respond(request, inference, state.result_cache)


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
