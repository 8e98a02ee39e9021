"""One audit record per inference request, and the ASGI middleware that writes it.

The middleware opens a record for every request to an inference route; the route
fills in who asked for what, once (``AuditRecord.fill``); the middleware watches the
response go out (status, bytes; the error code comes from the error itself, set where app.py
turns it into a response) and hands the finished record to the writer. It
wraps the response rather than the route so that a streamed result is counted
to its last byte and a failure anywhere is recorded too.

A record holds identifiers and sizes only: never pixel data, DICOM attributes,
patient names, credentials or the query string.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_proxy.errors import ErrorCode
from model_proxy.models.body import InstanceInput, SeriesInput
from model_proxy.upstream import tracing
from model_proxy.upstream.request_id import REQUEST_ID_HEADER, current_request_id

if TYPE_CHECKING:
    from model_proxy.inference.request import InferenceRequest

from .writer import AuditWriter

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_STATE_KEY = "audit_record"


class InferenceFigures(Protocol):
    """What an inference did, as its runner counts it."""

    model_called: bool
    instances_in: int
    dicom_bytes_in: int
    wire_bytes_out: int
    cache: str | None


@dataclass
class AuditRecord:
    """Filled in as the request goes; ``None`` where the request never got that far."""

    request_id: str
    time: str
    client: str | None
    method: str
    path: str
    caller: str | None = None
    model: str | None = None
    server: str | None = None
    level: str | None = None
    study: str | None = None
    series: str | None = None
    instance: str | None = None
    data_filters: list[dict[str, Any]] | None = None
    status: int | None = None
    code: str | None = None
    # What the runner did, read at the end (inference/runner.py's Figures).
    figures: InferenceFigures | None = None
    result_bytes_out: int = 0
    duration_ms: float = 0.0
    # The error's message, for the request's log line (not in the audit JSON: the
    # caller was told it, the audit trail keeps the code).
    error: str | None = None
    _started: float = field(default_factory=perf_counter, repr=False)

    def fill(
        self,
        *,
        caller: str | None,
        model: str | None,
        request: InferenceRequest | None,
        figures: InferenceFigures | None,
    ) -> None:
        """What the request established before it ended: who called, which model, and
        the parsed request (None when it was refused before it was parsed)."""
        self.caller, self.model, self.figures = caller, model, figures
        if request is not None:
            self.server, self.level = request.server.id, request.level.value
            target = request.target
            self.study, self.series, self.instance = target.study, target.series, target.instance
            self.data_filters = [_describe_input(item) for item in request.inputs] or None

    def to_json(self) -> dict[str, Any]:
        figures = self.figures
        return {
            "time": self.time,
            "requestId": self.request_id,
            "client": self.client,
            "caller": self.caller,
            "method": self.method,
            "path": self.path,
            "model": self.model,
            "server": self.server,
            "level": self.level,
            "study": self.study,
            "series": self.series,
            "instance": self.instance,
            "dataFilters": self.data_filters,
            "status": self.status,
            "code": self.code,
            # False when the result came from the cache or an identical request in flight.
            "modelCalled": figures.model_called if figures else False,
            "instancesIn": figures.instances_in if figures else 0,
            "dicomBytesIn": figures.dicom_bytes_in if figures else 0,
            "resultBytesOut": self.result_bytes_out,
            "durationMs": round(self.duration_ms, 1),
        }


def _describe_input(item: SeriesInput | InstanceInput) -> dict[str, Any]:
    if isinstance(item, InstanceInput):
        return {"dataKey": item.data_key, "instance": item.sop_uid}
    described: dict[str, Any] = {"dataKey": item.data_key, "series": item.series_uid}
    if item.instances:
        described["instances"] = [_describe_input(nested) for nested in item.instances]
    return described


def record_of(scope: Scope) -> AuditRecord | None:
    """The record the middleware keeps in ``scope``, if it runs."""
    record = scope.get("state", {}).get(_STATE_KEY)
    return record if isinstance(record, AuditRecord) else None


def audit_record(request: Request) -> AuditRecord:
    """The record of this request (a detached one when the middleware is not in use)."""
    record = request.scope.get("state", {}).get(_STATE_KEY)
    if isinstance(record, AuditRecord):
        return record
    return _new_record(request.scope)


def _new_record(scope: Scope) -> AuditRecord:
    supplied = ""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            supplied = value.decode("latin-1")
    client = scope.get("client")
    path: str = scope.get("path", "")
    return AuditRecord(
        request_id=supplied if _REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex,
        time=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        client=client[0] if client else None,
        method=scope.get("method", ""),
        path=path if len(path) <= 512 else path[:509] + "...",
    )


# Told of every finished request's record: the metrics and the request log line.
RecordObserver = Callable[["AuditRecord"], None]


class AuditMiddleware:
    """Pure ASGI: keeps a record of every HTTP request, hands each finished one to the
    ``observers`` and writes those whose path starts with one of ``prefixes`` (the
    inference routes) to the audit log."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        writer: AuditWriter | None,
        prefixes: Sequence[str],
        observers: Sequence[RecordObserver] = (),
    ) -> None:
        self.app = app
        self.writer = writer
        self.prefixes = tuple(prefixes)
        self.observers = tuple(observers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = _new_record(scope)
        scope.setdefault("state", {})[_STATE_KEY] = record
        # Sent on with every upstream call this request makes (upstream/request_id.py).
        current_request_id.set(record.request_id)
        finished = False

        async def watch(message: Message) -> None:
            nonlocal finished
            if message["type"] == "http.response.start":
                record.status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.lower().encode(), record.request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                record.result_bytes_out += len(body)
                finished = not message.get("more_body", False)
            await send(message)

        with tracing.span(
            f"{record.method} {_route_name(record.path)}", request_id=record.request_id
        ) as span:
            try:
                await self.app(scope, receive, watch)
            except BaseException:
                # Starlette renders the 500 further out; a started response was cut short.
                record.code = (
                    ErrorCode.RESPONSE_ABORTED if record.status else ErrorCode.INTERNAL_ERROR
                )
                record.status = record.status or 500
                raise
            finally:
                self._finish(record, finished)
                if span is not None:
                    span.set_attribute("http.response.status_code", record.status or 0)
                    span.set_attribute("model_proxy.code", record.code or "")
                    if record.model:
                        span.set_attribute("model_proxy.model", record.model)

    def _finish(self, record: AuditRecord, finished: bool) -> None:
        if record.code is None:
            record.code = _outcome(record.status, finished)
        if (record.status or 0) >= 400:
            record.result_bytes_out = 0  # an error body is not a result
        record.duration_ms = (perf_counter() - record._started) * 1000
        if self.writer is not None and record.path.startswith(self.prefixes):
            self.writer.write(record.to_json())
        for observe in self.observers:
            observe(record)


def _route_name(path: str) -> str:
    """A span name without UIDs: ``/segmentations/{model}/...``, or the path of a
    route of the proxy's own (``/metrics``)."""
    first = path.lstrip("/").split("/", 1)[0]
    return f"/{first}/{{model}}/..." if "/" in path.lstrip("/") else f"/{first}"[:64]


def _outcome(status: int | None, finished: bool) -> str:
    """The record's code when no error set one (app.py's handlers set it from the error)."""
    if status is None:
        return "no_response"
    if status < 400:
        return "ok" if finished else ErrorCode.RESPONSE_ABORTED
    return f"http_{status}"
