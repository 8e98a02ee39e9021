"""``serve --otlp-endpoint``: the collector's URL, checked before anything starts, and
OpenTelemetry tracing while the server runs (upstream/tracing.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from model_proxy.cli.options import CommandError
from model_proxy.errors import redact_urls

logger = logging.getLogger("model_proxy")


def otlp_url_of(endpoint: str | None) -> str | None:
    """The OTLP/HTTP traces URL of ``--otlp-endpoint`` (None: no tracing)."""
    if not endpoint:
        return None
    try:
        url = httpx.URL(endpoint)
    except httpx.InvalidURL:
        url = httpx.URL()
    if url.scheme not in ("http", "https") or not url.host:
        raise CommandError(f"--otlp-endpoint must be an http(s):// URL, got {endpoint!r}")
    if url.path in ("", "/"):
        url = url.copy_with(path="/v1/traces")  # the OTLP/HTTP traces path
    return str(url)


@contextmanager
def tracing_to(endpoint: str | None) -> Iterator[None]:
    """Traces to ``endpoint`` while the server runs; nothing at all without one."""
    if endpoint is None:
        yield
        return
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise CommandError(
            "--otlp-endpoint needs OpenTelemetry: pip install 'model-proxy[otel]'"
        ) from None
    from model_proxy import __version__
    from model_proxy.upstream import tracing

    provider = tracing.enable(OTLPSpanExporter(endpoint=endpoint), version=__version__)
    logger.info("tracing to %s", redact_urls(endpoint))
    try:
        yield
    finally:
        tracing.disable(provider)
