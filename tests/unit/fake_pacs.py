"""A DicomSource over a dict, for the unit tests of the body pipeline.

It records which retrievals were opened and closed, how many were open at
once, and can fail a retrieval after a number of instances or hold it until
the test lets it go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from model_proxy.errors import ErrorCode, NotFound, PacsError
from model_proxy.pacs.source import Target
from model_proxy.upstream.probe import ProbeResult

STUDY = "1.2.3"
SERIES_A = "1.2.3.1"
SERIES_B = "1.2.3.2"
A1, A2, A3 = "1.2.3.1.1", "1.2.3.1.2", "1.2.3.1.3"
B1 = "1.2.3.2.1"


def make_bytes(name: str) -> bytes:
    # Distinct content per instance, with every byte value, so mix-ups show.
    return name.encode() + bytes(range(256)) + name.encode()


FILES = {uid: make_bytes(uid) for uid in (A1, A2, A3, B1)}
SERIES = {SERIES_A: [A1, A2, A3], SERIES_B: [B1]}


class FakeSource:
    """A DicomSource over ``FILES``; ``content`` may produce the bytes of any UID."""

    label = "fake PACS"

    def __init__(
        self,
        *,
        missing: frozenset[Target] = frozenset(),
        fail_after: Mapping[Target, int] | None = None,
        extra_series: Mapping[str, list[str]] | None = None,
        content: Callable[[str], bytes] | None = None,
        gates: Mapping[Target, asyncio.Event] | None = None,
    ) -> None:
        self.series = {**SERIES, **(extra_series or {})}
        self.missing = missing
        self.fail_after = dict(fail_after or {})
        self.content = content or (lambda uid: FILES.get(uid, uid.encode()))
        self.gates = dict(gates or {})
        self.entered: list[Target] = []
        self.exited: list[Target] = []
        self.open_now = 0
        self.most_open = 0
        self.delivered = 0

    def _uids(self, target: Target) -> list[str]:
        if target.study != STUDY or target in self.missing:
            raise NotFound(f"{target.describe()} was not found", code=ErrorCode.NOT_ON_PACS)
        if target.series is None:
            return [uid for uids in self.series.values() for uid in uids]
        if target.series not in self.series:
            raise NotFound(f"{target.describe()} was not found", code=ErrorCode.NOT_ON_PACS)
        uids = self.series[target.series]
        if target.instance is None:
            return uids
        if target.instance not in uids:
            raise NotFound(f"{target.describe()} was not found", code=ErrorCode.NOT_ON_PACS)
        return [target.instance]

    @asynccontextmanager
    async def retrieve(self, target: Target) -> AsyncIterator[AsyncIterator[bytes]]:
        uids = self._uids(target)
        self.entered.append(target)
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            yield self._iterate(target, uids)
        finally:
            self.open_now -= 1
            self.exited.append(target)

    async def _iterate(self, target: Target, uids: list[str]) -> AsyncIterator[bytes]:
        gate = self.gates.get(target)
        for count, uid in enumerate(uids):
            if self.fail_after.get(target) == count:
                raise PacsError(f"{self.label}: connection reset")
            if gate is not None and count:
                await gate.wait()
            self.delivered += 1
            yield self.content(uid)

    async def probe(self) -> ProbeResult:
        return ProbeResult(True, 0.0, "fake")

    async def fingerprint(self, target: Target) -> str | None:
        return None

    async def store(self, objects: Sequence[Path]) -> None:
        raise NotImplementedError("the body pipeline and the breaker never store")

    async def aclose(self) -> None:
        return None
