"""An OTLP/HTTP trace receiver (what an OpenTelemetry Collector listens with on 4318),
in a thread of the test process so tests read the spans it got:

    with start_otlp_receiver() as receiver:
        ... model-proxy serve --otlp-endpoint {receiver.url} ...
        receiver.wait_for(lambda spans: "model.call" in {s.name for s in spans})
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from threaded_server import ThreadedServer

# The exporter sends a batch every few seconds; generous for a loaded machine.
RECEIVE_DEADLINE = 60.0


@dataclass(frozen=True)
class ReceivedSpan:
    name: str
    trace_id: str  # hex, as in a traceparent header
    span_id: str
    parent_span_id: str
    attributes: dict[str, object]
    service: str


class OtlpReceiver:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[ReceivedSpan] = []
        app = Starlette(routes=[Route("/v1/traces", self._traces, methods=["POST"])])
        self._http = ThreadedServer(app, "OTLP receiver")

    @property
    def url(self) -> str:
        """The base URL, as --otlp-endpoint takes it (it adds /v1/traces)."""
        return self._http.url

    @property
    def spans(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self._spans)

    def wait_for(self, condition: Callable[[list[ReceivedSpan]], bool]) -> list[ReceivedSpan]:
        deadline = time.monotonic() + RECEIVE_DEADLINE
        while time.monotonic() < deadline:
            spans = self.spans
            if condition(spans):
                return spans
            time.sleep(0.2)
        pytest.fail(f"the OTLP receiver did not get the spans; it got {self.spans}")

    async def _traces(self, request: Request) -> Response:
        if request.headers.get("content-type") != "application/x-protobuf":
            return Response(b"expected application/x-protobuf", 415)
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.body())
        received = []
        for resource_spans in export.resource_spans:
            service = next(
                (
                    attribute.value.string_value
                    for attribute in resource_spans.resource.attributes
                    if attribute.key == "service.name"
                ),
                "",
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes={
                                a.key: a.value.string_value or a.value.int_value
                                for a in span.attributes
                            },
                            service=service,
                        )
                    )
        with self._lock:
            self._spans.extend(received)
        return Response(
            ExportTraceServiceResponse().SerializeToString(),
            media_type="application/x-protobuf",
        )

    def start(self) -> None:
        self._http.start()

    def stop(self) -> None:
        self._http.stop()


@contextmanager
def start_otlp_receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()
