"""Health probes of upstreams, as shown on /status."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from model_proxy.errors import ProxyError, UpstreamError, redact_urls
from model_proxy.upstream.clients import translate_errors


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one probe."""

    ok: bool
    latency_ms: float
    detail: str
    http_status: int | None = None


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (a ``time.perf_counter()`` reading)."""
    return round((time.perf_counter() - started) * 1000, 1)


def answered_200(status: int) -> bool:
    return status == 200


async def probe_get(
    client: httpx.AsyncClient,
    url: str,
    *,
    label: str,
    error_type: type[UpstreamError],
    limits: httpx.Timeout,
    is_up: Callable[[int], bool] = answered_200,
) -> ProbeResult:
    """GET ``url`` with the client's auth, following redirects; never raises."""
    started = time.perf_counter()
    try:
        with translate_errors(label, error_type):
            response = await client.get(url, follow_redirects=True, timeout=limits)
    except ProxyError as exc:
        return ProbeResult(False, elapsed_ms(started), exc.message)
    status = response.status_code
    return ProbeResult(
        is_up(status),
        elapsed_ms(started),
        f"{redact_urls(url)} answered {status} {response.reason_phrase}",
        status,
    )
