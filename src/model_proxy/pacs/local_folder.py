"""A folder of DICOM files served as if it were a PACS (``"uri": "file:///..."``).

The folder is indexed by Study/Series/SOP Instance UID from the files' headers,
whatever their names or layout (pacs/folder_index.py). The first index starts in the
background at start-up and the first request waits for it; after that no request
waits for a scan: a request that finds the index older
than ``min_rescan_interval`` (``--folder-rescan``) starts an incremental rescan in the
background and answers from the index it has. Files copied in while the proxy runs
are found once that rescan ends; a cache hit or a 404 never waits for one.

The index is shared by every config state of the process (a reload must not parse
50,000 files again), like the result cache.

A file symlink whose target lies outside the folder is neither indexed nor read
(whoever can write into the folder could otherwise have any file the proxy may read
served), unless ``--allow-symlinks-outside-folder`` says the site wants them
(docs/security.md). Symlinks to folders are not followed at all.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import ClassVar

from model_proxy.config import ServerConfig
from model_proxy.errors import ErrorCode, NotFound, PacsError, short_id
from model_proxy.pacs.folder_index import FolderIndex
from model_proxy.pacs.source import Target
from model_proxy.pacs.stow import store_in_folder
from model_proxy.upstream.probe import ProbeResult, elapsed_ms

logger = logging.getLogger(__name__)

__all__ = ["FolderIndex", "IndexedFolder", "LocalFolderSource"]


class IndexedFolder:
    """A folder's index and the one scan of it that may run at a time."""

    _open: ClassVar[dict[tuple[Path, bool], IndexedFolder]] = {}

    @classmethod
    def shared(cls, root: Path, *, allow_outside_links: bool = False) -> IndexedFolder:
        key = (root.absolute(), allow_outside_links)
        found = cls._open.get(key)
        if found is None:
            found = cls._open[key] = cls(root, allow_outside_links=allow_outside_links)
        return found

    def __init__(self, root: Path, *, allow_outside_links: bool = False) -> None:
        self.index = FolderIndex(root, allow_outside_links=allow_outside_links)
        self.scanned_at: float | None = None  # monotonic, when the last scan ended
        self._scan: asyncio.Task[None] | None = None

    def _running_scan(self) -> asyncio.Task[None] | None:
        task = self._scan
        # A task of another event loop (a test's, now closed) is no scan of ours.
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            return None
        return task

    def start_scan(self) -> asyncio.Task[None]:
        task = self._running_scan()
        if task is None:
            task = self._scan = asyncio.get_running_loop().create_task(self._run_scan())
        return task

    async def _run_scan(self) -> None:
        try:
            await asyncio.to_thread(self.index.scan)
        except Exception:  # a background task: its failure must reach the log
            logger.exception("scanning %s failed; the previous index stays", self.index.root)
        self.scanned_at = time.monotonic()

    async def ready(self) -> None:
        """The first index of the folder (once per process), awaited."""
        if self.scanned_at is None:
            await asyncio.shield(self.start_scan())

    def refresh_if_older_than(self, seconds: float) -> None:
        """Start a rescan in the background when the index is older; never waits."""
        if self.scanned_at is not None and time.monotonic() - self.scanned_at >= seconds:
            self.start_scan()

    async def refreshed(self, max_age: float) -> None:
        """Wait for the scan under way, then for a new one if the index is older than
        ``max_age`` (the /status probe: its rounds are rate-limited themselves)."""
        running = self._running_scan()
        if running is not None:
            await asyncio.shield(running)
        if self.scanned_at is None or time.monotonic() - self.scanned_at >= max_age:
            await asyncio.shield(self.start_scan())


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

    def __init__(
        self,
        server: ServerConfig,
        *,
        min_rescan_interval: float = 1.0,
        allow_outside_links: bool = False,
    ) -> None:
        self.label = f"local folder {short_id(server.id)}"
        self._folder = IndexedFolder.shared(
            server.local_path, allow_outside_links=allow_outside_links
        )
        self._index = self._folder.index
        self._min_rescan_interval = min_rescan_interval

    def start_indexing(self) -> None:
        """Index the folder in the background now (at start-up), so that the first
        request does not wait for all of it; a no-op once it is indexed."""
        if self._folder.scanned_at is None:
            self._folder.start_scan()

    async def fresh_index(self) -> FolderIndex:
        """The index after a rescan that started now (the prefetch watcher: it sees new
        files on its own interval, not only when a request comes)."""
        await self._folder.refreshed(0.0)
        if self._index.root_missing:
            raise PacsError(f"{self.label}: folder {self._index.root} does not exist")
        return self._index

    async def _indexed(self) -> FolderIndex:
        await self._folder.ready()
        if self._index.root_missing:
            raise PacsError(f"{self.label}: folder {self._index.root} does not exist")
        self._folder.refresh_if_older_than(self._min_rescan_interval)
        return self._index

    async def _paths_for(self, target: Target) -> list[Path]:
        paths = (await self._indexed()).lookup(target)
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
            # Checked again: the file may have become a symlink since the scan.
            if not self._index.allow_outside_links and not self._index.contains(path):
                raise NotFound(
                    f"{self.label}: {path.name} now links outside the folder; not served",
                    code=ErrorCode.NOT_ON_PACS,
                )
            try:
                yield await asyncio.to_thread(path.read_bytes)
            except OSError as exc:
                raise PacsError(
                    f"{self.label}: could not read {path.name} ({exc.strerror or exc})"
                ) from exc

    async def fingerprint(self, target: Target) -> str | None:
        """The paths, sizes and modification times of the target's files (stat of
        those files only; the index is not rescanned for it)."""
        try:
            paths = (await self._indexed()).lookup(target)
        except PacsError:
            return None  # the retrieval reports it
        if not paths:
            return None
        return await asyncio.to_thread(_files_fingerprint, paths)

    async def probe(self) -> ProbeResult:
        started = time.perf_counter()
        await self._folder.refreshed(self._min_rescan_interval)
        if self._index.root_missing:
            detail = f"{self.label}: folder {self._index.root} does not exist"
            return ProbeResult(False, elapsed_ms(started), detail)
        instances, studies = self._index.instance_count, len(self._index.studies)
        detail = (
            f"{instances} instance{'s' * (instances != 1)}"
            f" in {studies} stud{'ies' if studies != 1 else 'y'}"
        )
        return ProbeResult(True, elapsed_ms(started), detail)

    async def store(self, objects: Sequence[Path]) -> None:
        await store_in_folder(self._index.root, self.label, objects)
        # Found once this rescan ends (or the next, if one was already under way).
        self._folder.start_scan()

    async def aclose(self) -> None:
        return None  # the shared index outlives this state
