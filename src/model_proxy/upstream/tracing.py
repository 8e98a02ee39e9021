"""Optional OpenTelemetry tracing (``--otlp-endpoint``; docs/operations.md#tracing).

Off by default, and then free: ``span()`` checks one module variable and yields
None, and nothing of OpenTelemetry is imported (it is an optional dependency, the
``otel`` extra). On, each request gets a span with children for its PACS
retrievals, the encoding of each retrieval, the model call and the cache store,
and every upstream call carries a W3C ``traceparent`` (transport.py), so the PACS
and the model can join the trace::

    provider = enable(OTLPSpanExporter(endpoint=...))   # at start-up
    with span("model.call", upstream="model d4e548ad") as current: ...
    disable(provider)                                     # at shutdown: flushes
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

# The process's tracer while tracing is on; None keeps every span() a no-op.
_tracer: Tracer | None = None


def enable(exporter: SpanExporter, *, version: str = "") -> TracerProvider:
    """Trace from now on, exporting spans in batches from a background thread."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    global _tracer
    provider = TracerProvider(
        resource=Resource.create({"service.name": "model-proxy", "service.version": version})
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _tracer = provider.get_tracer("model_proxy")
    return provider


def disable(provider: TracerProvider) -> None:
    """Stop tracing; the spans still queued are exported first."""
    global _tracer
    _tracer = None
    provider.shutdown()


def enabled() -> bool:
    return _tracer is not None


@contextmanager
def span(name: str, **attributes: str | int) -> Iterator[Span | None]:
    """A span around the block, child of the current one; None when tracing is off."""
    tracer = _tracer
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


def trace_headers() -> list[tuple[bytes, bytes]]:
    """``traceparent`` (and ``tracestate``) of the current span; none when off."""
    if _tracer is None:
        return []
    from opentelemetry.propagate import inject

    carrier: dict[str, Any] = {}
    inject(carrier)
    return [(name.encode(), str(value).encode()) for name, value in carrier.items()]
