"""What every source of DICOM instances offers: a DICOMweb PACS or a local folder."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from model_proxy.upstream.probe import ProbeResult


@dataclass(frozen=True)
class Target:
    """What to retrieve: a study, one series of it, or one instance of that series."""

    study: str
    series: str | None = None
    instance: str | None = None

    def describe(self) -> str:
        if self.instance is not None:
            return f"instance {self.instance} of series {self.series} of study {self.study}"
        if self.series is not None:
            return f"series {self.series} of study {self.study}"
        return f"study {self.study}"


class DicomSource(Protocol):
    """A place that serves DICOM Part-10 instances by UID.

    ``retrieve`` is an async context manager: entering it starts the retrieval
    and raises NotFound/PacsError/UpstreamTimeout before any data is consumed,
    so a missing study is reported before the model is called. The iterator it
    gives yields one whole Part-10 file at a time. ``fingerprint`` validates
    cached results.
    """

    label: str

    def retrieve(self, target: Target) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...

    async def probe(self) -> ProbeResult: ...

    async def fingerprint(self, target: Target) -> str | None:
        """A short string that changes when the instances behind ``target`` change,
        for the result cache to know a result is still valid; None when it cannot
        tell (the result is then not cached). Cheap: a query, never a retrieval."""
        ...

    async def store(self, objects: Sequence[Path]) -> None:
        """Store Part-10 files on disk (STOW-RS, or into the folder); PacsError if any
        was not."""
        ...

    async def aclose(self) -> None: ...
