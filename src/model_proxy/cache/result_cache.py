"""The result cache as the routes use it: the store, the flights, and reading entries."""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from pathlib import Path
from typing import BinaryIO, ClassVar

from model_proxy.cache.flights import Flights
from model_proxy.cache.shared_results import SharedResults
from model_proxy.cache.store import (
    CorruptEntry,
    ResultStore,
    Spool,
    read_trailer,
    read_verified,
)

logger = logging.getLogger(__name__)

# Entries up to this size are read and checked whole before the answer starts,
# so a damaged one is never half-served; bigger ones are checked as they stream.
_WHOLE_READ_BYTES = 16 << 20
_INLINE_READ_BYTES = 1 << 20
_CHUNK_BYTES = 1 << 20


class ResultCache:
    """``max_bytes`` 0 disables it (and coalescing with it). Get it with ``shared``."""

    _open: ClassVar[dict[tuple[Path, int], ResultCache]] = {}

    @classmethod
    def shared(cls, root: Path, max_bytes: int) -> ResultCache:
        """The process's cache of ``root``: a config reload builds a new ProxyState,
        which must keep the same index and the flights under way."""
        key = (root.absolute(), max_bytes)
        found = cls._open.get(key)
        if found is None:
            found = cls._open[key] = cls(root, max_bytes)
        return found

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.store = ResultStore(root, max_bytes)
        self.flights = Flights(self.store)
        self.enabled = max_bytes > 0
        # --redis: entries shared with the other replicas (set while the app runs).
        self.shared_results: SharedResults | None = None
        if self.enabled:
            try:
                self.store.open()
            except OSError as exc:
                logger.warning("result cache disabled: cannot use %s (%s)", root, exc)
                self.enabled = False
        else:
            # Private spools (cache/flights.py) still go to tmp/: clear a stopped
            # process's leftovers without touching the entries of a cache turned off.
            try:
                self.store.empty_tmp()
            except OSError as exc:
                logger.warning("result spool: cannot use %s (%s)", root / "tmp", exc)

    async def read_whole(self, key: str, coding: str) -> bytes | None:
        """A small entry, checked; None when absent, too big to read whole, or damaged."""
        found = self.store.lookup(key, coding)
        if found is None or found[1] > _WHOLE_READ_BYTES:
            return None
        path, size = found
        try:
            if size > _INLINE_READ_BYTES:
                return await asyncio.to_thread(read_verified, path)
            return read_verified(path)
        except (CorruptEntry, OSError) as exc:
            self._drop_damaged(key, exc)
            return None

    async def open_stream(self, key: str, coding: str) -> AsyncGenerator[bytes, None] | None:
        """An entry of any size as chunks, its checksum verified at the end (a
        mismatch raises CorruptEntry: the response then aborts)."""
        found = self.store.lookup(key, coding)
        if found is None:
            return None
        path = found[0]
        try:
            length, crc = await asyncio.to_thread(read_trailer, path)
            file = await asyncio.to_thread(open, path, "rb")
        except (CorruptEntry, OSError) as exc:
            self._drop_damaged(key, exc)
            return None
        return self._chunks(file, key, length, crc)

    async def _chunks(
        self, file: BinaryIO, key: str, length: int, crc: int
    ) -> AsyncGenerator[bytes, None]:
        with file:
            seen = 0
            running = 0
            while seen < length:
                data = await asyncio.to_thread(file.read, min(_CHUNK_BYTES, length - seen))
                if not data:
                    break
                seen += len(data)
                running = zlib.crc32(data, running)
                yield data
            if seen != length or running != crc:
                error = CorruptEntry(f"cache entry {key} changed or is damaged")
                self._drop_damaged(key, error)
                raise error

    def tee(
        self,
        chunks: AsyncGenerator[bytes, None],
        key: str,
        coding: str,
        *,
        commit_if: Callable[[], bool],
    ) -> AsyncGenerator[bytes, None]:
        """``chunks`` passed on and written to a new entry of ``key`` in ``coding``,
        kept if they all went through and ``commit_if()`` is true then."""
        try:
            spool = self.store.spool(key, coding)
        except OSError as exc:
            logger.warning("result cache: cannot store a %s variant (%s)", coding, exc)
            return chunks
        return self._tee(chunks, spool, commit_if)

    async def _tee(
        self, chunks: AsyncGenerator[bytes, None], spool: Spool, commit_if: Callable[[], bool]
    ) -> AsyncGenerator[bytes, None]:
        complete = False
        try:
            async with aclosing(chunks):
                async for chunk in chunks:
                    spool.write(chunk)
                    yield chunk
            complete = True
        finally:
            if complete and commit_if():
                self.store.commit(spool)
            else:
                spool.discard()

    def _drop_damaged(self, key: str, exc: BaseException) -> None:
        logger.warning("result cache: dropping damaged entry %s (%s)", key, exc)
        self.store.drop(key)
