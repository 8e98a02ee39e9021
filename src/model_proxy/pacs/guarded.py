"""A DICOM source behind its circuit breaker (upstream/breaker.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from model_proxy.pacs.source import DicomSource, Target
from model_proxy.upstream.breaker import BreakerState, CircuitBreaker
from model_proxy.upstream.probe import ProbeResult


class GuardedSource:
    """Retrievals from ``inner`` fail fast with 503 while its breaker is open.

    A retrieval counts from the request until the last instance was read, so a
    PACS that breaks mid-stream counts as failing. Probes (for /status) bypass
    the breaker: they show the server's health, they do not change the verdict.
    """

    def __init__(self, inner: DicomSource, breaker: CircuitBreaker) -> None:
        self.label = inner.label
        self.breaker = breaker
        self._inner = inner

    @property
    def inner(self) -> DicomSource:
        """The source behind the breaker (the prefetch watcher searches it directly)."""
        return self._inner

    @asynccontextmanager
    async def retrieve(self, target: Target) -> AsyncIterator[AsyncIterator[bytes]]:
        async with self.breaker.guard(), self._inner.retrieve(target) as instances:
            yield instances

    async def probe(self) -> ProbeResult:
        return await self._inner.probe()

    async def fingerprint(self, target: Target) -> str | None:
        # A query for the cache, not a retrieval: it does not feed the breaker. While
        # the breaker is open the retrieval will fail fast anyway; asking the PACS
        # first would only make the caller wait for a server known to be down.
        if self.breaker.state is BreakerState.OPEN:
            return None
        return await self._inner.fingerprint(target)

    async def store(self, objects: Sequence[Path]) -> None:
        # Not through the breaker: a refused store says nothing about reads.
        await self._inner.store(objects)

    async def aclose(self) -> None:
        await self._inner.aclose()
