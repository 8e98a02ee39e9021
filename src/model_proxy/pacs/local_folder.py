"""A folder of DICOM files served as if it were a PACS (``"uri": "file:///..."``).

The folder is indexed by Study/Series/SOP Instance UID from the files' headers,
whatever their names or layout. Rescans parse only files whose size or
modification time changed, and run when a lookup misses (rate-limited), so
files copied in while the proxy runs are found without a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from model_proxy.config import ServerConfig
from model_proxy.errors import ErrorCode, NotFound, PacsError, short_id
from model_proxy.pacs.source import Target
from model_proxy.upstream.probe import ProbeResult, elapsed_ms

logger = logging.getLogger(__name__)

_UID_TAGS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]


@dataclass(frozen=True)
class _IndexedFile:
    study: str
    series: str
    instance: str


class FolderIndex:
    """UID -> path index of one folder tree; ``scan`` is blocking (run it in a thread)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: dict[Path, tuple[tuple[int, int], _IndexedFile | None]] = {}
        self.studies: dict[str, dict[str, dict[str, Path]]] = {}

    def scan(self) -> None:
        # Keyed by (size, mtime): unchanged files, DICOM or not, are not parsed again.
        files: dict[Path, tuple[tuple[int, int], _IndexedFile | None]] = {}
        for directory, _dirs, names in os.walk(self.root):
            for name in names:
                path = Path(directory) / name
                try:
                    stat = path.stat()
                except OSError:
                    continue
                signature = (stat.st_size, stat.st_mtime_ns)
                known = self._files.get(path)
                if known is not None and known[0] == signature:
                    files[path] = known
                else:
                    files[path] = (signature, _read_uids(path))
        studies: dict[str, dict[str, dict[str, Path]]] = {}
        for path, (_signature, entry) in files.items():
            if entry is not None:
                studies.setdefault(entry.study, {}).setdefault(entry.series, {})[entry.instance] = (
                    path
                )
        self._files = files
        self.studies = studies

    def lookup(self, target: Target) -> list[Path]:
        series_map = self.studies.get(target.study, {})
        if target.series is None:
            return [path for instances in series_map.values() for path in instances.values()]
        instances = series_map.get(target.series, {})
        if target.instance is None:
            return list(instances.values())
        path = instances.get(target.instance)
        return [path] if path is not None else []

    @property
    def instance_count(self) -> int:
        return sum(len(i) for series in self.studies.values() for i in series.values())


def _read_uids(path: Path) -> _IndexedFile | None:
    try:
        # pydicom warns, rather than raises, on some corrupt files: skip those too.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            dataset = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_UID_TAGS)
            uids = [str(dataset.get(tag, "")) for tag in _UID_TAGS]
    except (InvalidDicomError, OSError, ValueError, KeyError, EOFError, Warning) as exc:
        logger.debug("skipping %s: not a readable DICOM file (%s)", path, exc)
        return None
    if not all(uids):
        logger.debug("skipping %s: it lacks one of %s", path, ", ".join(_UID_TAGS))
        return None
    return _IndexedFile(*uids)


def _files_fingerprint(paths: list[Path]) -> str | None:
    digest = hashlib.sha256()
    for path in sorted(paths):
        try:
            stat = path.stat()
        except OSError:
            return None
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "files:" + digest.hexdigest()


class LocalFolderSource:
    """Serves the DICOM files under a folder by UID."""

    def __init__(self, server: ServerConfig, *, min_rescan_interval: float = 1.0) -> None:
        self.label = f"local folder {short_id(server.id)}"
        self._index = FolderIndex(server.local_path)
        self._lock = asyncio.Lock()
        self._scanned_at: float | None = None
        self._min_rescan_interval = min_rescan_interval

    async def _refresh(self, *, only_if_stale: bool) -> None:
        async with self._lock:
            now = time.monotonic()
            if (
                only_if_stale
                and self._scanned_at is not None
                and now - self._scanned_at < self._min_rescan_interval
            ):
                return
            if not self._index.root.is_dir():
                raise PacsError(f"{self.label}: folder {self._index.root} does not exist")
            await asyncio.to_thread(self._index.scan)
            self._scanned_at = time.monotonic()

    async def _paths_for(self, target: Target) -> list[Path]:
        if self._scanned_at is None:
            await self._refresh(only_if_stale=False)
        paths = self._index.lookup(target)
        if not paths:
            await self._refresh(only_if_stale=True)
            paths = self._index.lookup(target)
        if not paths:
            raise NotFound(
                f"{target.describe()} was not found in {self.label}", code=ErrorCode.NOT_ON_PACS
            )
        return sorted(paths)

    @asynccontextmanager
    async def retrieve(self, target: Target) -> AsyncIterator[AsyncIterator[bytes]]:
        paths = await self._paths_for(target)
        instances = self._read_files(paths)
        try:
            yield instances
        finally:
            await instances.aclose()

    async def _read_files(self, paths: list[Path]) -> AsyncGenerator[bytes, None]:
        for path in paths:
            try:
                yield await asyncio.to_thread(path.read_bytes)
            except OSError as exc:
                raise PacsError(
                    f"{self.label}: could not read {path.name} ({exc.strerror or exc})"
                ) from exc

    async def fingerprint(self, target: Target) -> str | None:
        """The paths, sizes and modification times of the target's files, after a
        rescan (stat only; changed files are parsed again)."""
        try:
            await self._refresh(only_if_stale=False)
        except PacsError:
            return None  # the retrieval reports it
        paths = self._index.lookup(target)
        if not paths:
            return None
        return await asyncio.to_thread(_files_fingerprint, paths)

    async def probe(self) -> ProbeResult:
        started = time.perf_counter()
        try:
            await self._refresh(only_if_stale=True)
        except PacsError as exc:
            return ProbeResult(False, elapsed_ms(started), exc.message)
        instances, studies = self._index.instance_count, len(self._index.studies)
        detail = (
            f"{instances} instance{'s' * (instances != 1)}"
            f" in {studies} stud{'ies' if studies != 1 else 'y'}"
        )
        return ProbeResult(True, elapsed_ms(started), detail)

    async def aclose(self) -> None:
        return None
