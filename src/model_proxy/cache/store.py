"""Results on disk: one file per result and content coding, LRU-evicted under a size cap.

Layout under the cache folder (``<data-dir>/result-cache``)::

    <key>.identity    the result JSON as the viewer receives it
    <key>.zstd        the same, compressed (br, gzip likewise), made on demand
    tmp/              files being written; emptied at start-up

A file is written under ``tmp/`` and renamed into place only once complete,
so a crash never leaves a partial entry under a final name. Each file ends
with a trailer (magic, payload length, CRC-32) checked before it is served:
a file damaged on disk, or cut by a power loss after the rename, is dropped
and the result computed again. One proxy process owns a cache folder.
"""

from __future__ import annotations

import logging
import os
import secrets
import struct
import zlib
from collections import OrderedDict
from pathlib import Path

logger = logging.getLogger(__name__)

_TRAILER = struct.Struct("<8sQI")
_MAGIC = b"MPRCACHE"
TRAILER_BYTES = _TRAILER.size
_CODINGS = ("identity", "zstd", "br", "gzip")


class CorruptEntry(Exception):
    """A cache file whose trailer or checksum does not match its content."""


class Spool:
    """A cache file being written; ``ResultStore.commit`` makes it an entry."""

    def __init__(self, path: Path, key: str, coding: str) -> None:
        self.path = path
        self.key = key
        self.coding = coding
        self.size = 0
        self._crc = 0
        # Unbuffered: a reader of the growing file sees every byte once written.
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115 (closed by finish/discard)

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._crc = zlib.crc32(data, self._crc)
        self.size += len(data)

    def finish(self) -> None:
        self._file.write(_TRAILER.pack(_MAGIC, self.size, self._crc))
        self._file.close()

    def close(self) -> None:
        """Stop writing and keep the file as it is (a private spool: no trailer)."""
        self._file.close()

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


class ResultStore:
    """The cache folder and its LRU index; not safe across threads (use it from
    the event loop; the file reads and writes it hands out may run in threads)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._tmp = root / "tmp"
        # key -> {coding: file size}; least recently used first.
        self._entries: OrderedDict[str, dict[str, int]] = OrderedDict()
        self.total_bytes = 0

    def empty_tmp(self) -> None:
        """Create tmp/ and remove what a stopped process left there."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self._tmp.iterdir():
            leftover.unlink(missing_ok=True)

    def open(self) -> None:
        """Create the folder, empty tmp/ and index the entries already there."""
        self.empty_tmp()
        found: list[tuple[int, str, str, int]] = []
        for path in self.root.iterdir():
            key, _, coding = path.name.partition(".")
            if coding not in _CODINGS or not path.is_file():
                continue
            stat = path.stat()
            found.append((stat.st_mtime_ns, key, coding, stat.st_size))
        for _, key, coding, size in sorted(found):
            self._entries.setdefault(key, {})[coding] = size
            self._entries.move_to_end(key)
            self.total_bytes += size
        self._evict()

    def path(self, key: str, coding: str) -> Path:
        return self.root / f"{key}.{coding}"

    def lookup(self, key: str, coding: str) -> tuple[Path, int] | None:
        """The file of ``key`` in ``coding`` and its payload size, marked as just used."""
        codings = self._entries.get(key)
        if codings is None or coding not in codings:
            return None
        self._entries.move_to_end(key)
        path = self.path(key, coding)
        try:
            os.utime(path)  # the LRU order survives a restart
        except OSError:
            self.drop(key)
            return None
        return path, codings[coding] - TRAILER_BYTES

    def spool(self, key: str, coding: str) -> Spool:
        return Spool(self._tmp / f"{key}.{coding}.{secrets.token_hex(4)}", key, coding)

    def private_spool(self) -> Spool:
        """A file in tmp/ for one request's result, never committed (cache on or off)."""
        self._tmp.mkdir(parents=True, exist_ok=True)
        return Spool(self._tmp / f"private.{secrets.token_hex(8)}", "", "identity")

    def commit(self, spool: Spool) -> bool:
        """Close ``spool`` and rename it into place; False (and discarded) when it
        alone exceeds the cap."""
        spool.finish()
        size = spool.size + TRAILER_BYTES
        if size > self.max_bytes:
            spool.path.unlink(missing_ok=True)
            return False
        os.replace(spool.path, self.path(spool.key, spool.coding))
        codings = self._entries.setdefault(spool.key, {})
        self.total_bytes += size - codings.get(spool.coding, 0)
        codings[spool.coding] = size
        self._entries.move_to_end(spool.key)
        self._evict(keep=spool.key)
        return True

    def drop(self, key: str) -> None:
        """Forget ``key`` and delete its files (a damaged entry, or eviction)."""
        for coding, size in self._entries.pop(key, {}).items():
            self.total_bytes -= size
            self.path(key, coding).unlink(missing_ok=True)

    def _evict(self, keep: str | None = None) -> None:
        while self.total_bytes > self.max_bytes and self._entries:
            oldest = next(iter(self._entries))
            if oldest == keep:
                if len(self._entries) == 1:
                    return
                self._entries.move_to_end(oldest)
                continue
            logger.debug("result cache: evicting %s", oldest)
            self.drop(oldest)


def read_verified(path: Path) -> bytes:
    """The payload of a cache file, its trailer and checksum checked (blocking)."""
    data = path.read_bytes()
    if len(data) < TRAILER_BYTES:
        raise CorruptEntry(f"{path.name}: shorter than its trailer")
    magic, length, crc = _TRAILER.unpack_from(data, len(data) - TRAILER_BYTES)
    payload = memoryview(data)[: len(data) - TRAILER_BYTES]
    if magic != _MAGIC or length != len(payload) or zlib.crc32(payload) != crc:
        raise CorruptEntry(f"{path.name}: trailer or checksum does not match")
    return bytes(payload)


def read_trailer(path: Path) -> tuple[int, int]:
    """(payload length, CRC-32) from a cache file's trailer (blocking)."""
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        if size < TRAILER_BYTES:
            raise CorruptEntry(f"{path.name}: shorter than its trailer")
        file.seek(size - TRAILER_BYTES)
        magic, length, crc = _TRAILER.unpack(file.read(TRAILER_BYTES))
    if magic != _MAGIC or length != size - TRAILER_BYTES:
        raise CorruptEntry(f"{path.name}: trailer does not match")
    return length, crc
