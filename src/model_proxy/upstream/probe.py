"""Health probes of upstreams, as shown on /status, and the cache of probe rounds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
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


class ProbeRounds:
    """The last round of probes, reused for ``max_age`` seconds; one round at a time.

    ``/status`` probes every PACS and model. Without this, each call is a round of
    requests to every upstream, so a flood of status calls becomes a flood of
    probes. Callers that arrive while a round runs wait for that round; a caller
    that goes away does not cancel it for the others.
    """

    def __init__(self, max_age: float) -> None:
        self.max_age = max_age
        self.rounds = 0
        self.waiting = 0  # callers waiting for the round in flight
        self._results: list[ProbeResult] | None = None
        self._finished_at = 0.0
        self._running: asyncio.Task[list[ProbeResult]] | None = None

    async def results(
        self, probe_all: Callable[[], Awaitable[list[ProbeResult]]]
    ) -> tuple[list[ProbeResult], float]:
        """The results of the last round if it is fresh, else of a new one, with their
        age in seconds."""
        if self._results is not None:
            age = time.monotonic() - self._finished_at
            if age < self.max_age:
                return self._results, age
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._round(probe_all))
        self.waiting += 1
        try:
            results = await asyncio.shield(self._running)
        finally:
            self.waiting -= 1
        return results, max(0.0, time.monotonic() - self._finished_at)

    async def _round(
        self, probe_all: Callable[[], Awaitable[list[ProbeResult]]]
    ) -> list[ProbeResult]:
        try:
            self.rounds += 1
            results = await probe_all()
            self._results, self._finished_at = results, time.monotonic()
            return results
        finally:
            self._running = None

    async def aclose(self) -> None:
        """With the state: a round still running is cancelled."""
        task, self._running = self._running, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
