"""OpenTelemetry tracing, in process with the SDK's in-memory exporter: a request's
spans form one trace (request, PACS retrieval, encoding, model call, cache store), the
model receives the W3C traceparent of the model call, and with tracing off nothing is
recorded or sent."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from app_proxy import ALL_LEVELS, Deployment
from app_upstreams import serve_in_thread
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.types import Receive, Scope, Send

from model_proxy.example_model import create_app as create_example_model
from model_proxy.upstream import tracing

pytestmark = pytest.mark.anyio


class RecordingModel:
    """The example model, remembering the trace headers of each request."""

    def __init__(self) -> None:
        self.app = create_example_model()
        self.traceparents: list[str | None] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = dict(scope["headers"])
            found = headers.get(b"traceparent")
            self.traceparents.append(found.decode() if found else None)
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def recording_model() -> Iterator[tuple[RecordingModel, str]]:
    model = RecordingModel()
    with serve_in_thread(model) as url:
        yield model, url


async def test_a_request_is_one_trace_and_the_model_gets_its_traceparent(
    deployment: Deployment, tmp_path: Path, recording_model: tuple[RecordingModel, str]
) -> None:
    model, url = recording_model
    seg = deployment.models["seg"]
    models = {seg: {"uri": f"{url}/segmentation", "task": "segmentation", "supports": ALL_LEVELS}}
    exporter = InMemorySpanExporter()
    provider = tracing.enable(exporter, version="test")
    try:
        async with deployment.proxy(tmp_path, models=models) as proxy:
            before = len(model.traceparents)
            # The folder server is the default: its result is cached (a cache.store span).
            response = await proxy.client.get(deployment.path("seg", "series"))
            assert response.status_code == 200, response.text
    finally:
        tracing.disable(provider)  # flushes the batch
    spans = exporter.get_finished_spans()
    by_name = {span.name: span for span in spans}
    request = by_name["GET /segmentations/{model}/..."]
    for name in ("pacs.retrieve", "model.encode", "model.call", "cache.store"):
        assert name in by_name, sorted(by_name)
        child = by_name[name]
        assert child.context is not None and request.context is not None
        assert child.context.trace_id == request.context.trace_id
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 200
    assert request.attributes["model_proxy.model"] == seg
    assert request.attributes["request_id"] == response.headers["x-request-id"]
    call = by_name["model.call"].context
    assert call is not None
    [traceparent] = model.traceparents[before:]
    assert traceparent is not None
    assert traceparent.startswith(f"00-{call.trace_id:032x}-{call.span_id:016x}-")  # then flags
    # No study or series UID in any span name or attribute.
    shown = " ".join(f"{span.name} {dict(span.attributes or {})}" for span in spans)
    assert deployment.study.study_uid not in shown


async def test_tracing_off_sends_no_traceparent(
    deployment: Deployment, tmp_path: Path, recording_model: tuple[RecordingModel, str]
) -> None:
    model, url = recording_model
    seg = deployment.models["seg"]
    models = {seg: {"uri": f"{url}/segmentation", "task": "segmentation", "supports": ALL_LEVELS}}
    assert not tracing.enabled()
    async with deployment.proxy(tmp_path, models=models) as proxy:
        before = len(model.traceparents)
        response = await proxy.client.get(deployment.path("seg", "instance"))
    assert response.status_code == 200, response.text
    assert model.traceparents[before:] == [None]
