"""Content-Encoding for results: negotiation and streaming compressors.

Results are JSON whose masks are long runs of ``0,0,0`` and ``1,1,1``: they
shrink by two to three orders of magnitude (docs/performance.md). Levels are
chosen for speed, since a result is compressed while it streams: zstd 3 and
brotli 1 run at several hundred MB/s on masks, gzip 1 at about 100 MB/s.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Protocol

import brotli
import zstandard

# Preferred first when the viewer gives several codings the same q-value.
ENCODINGS = ("zstd", "br", "gzip")
IDENTITY = "identity"

# Bigger chunks are compressed in a thread so the event loop keeps serving.
_THREAD_BYTES = 256 * 1024


class Encoder(Protocol):
    def compress(self, data: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


class _Gzip:
    def __init__(self) -> None:
        self._compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: gzip framing

    def compress(self, data: bytes) -> bytes:
        return self._compressor.compress(data)

    def finish(self) -> bytes:
        return self._compressor.flush()


class _Brotli:
    def __init__(self) -> None:
        self._compressor = brotli.Compressor(quality=1)

    def compress(self, data: bytes) -> bytes:
        out: bytes = self._compressor.process(data)
        return out

    def finish(self) -> bytes:
        out: bytes = self._compressor.finish()
        return out


class _Zstd:
    def __init__(self) -> None:
        # The checksum lets a reader of a stored entry detect corruption.
        params = zstandard.ZstdCompressor(level=3, write_checksum=True)
        self._compressor = params.compressobj()

    def compress(self, data: bytes) -> bytes:
        return self._compressor.compress(data)

    def finish(self) -> bytes:
        return self._compressor.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)


def make_encoder(encoding: str) -> Encoder:
    """A fresh streaming compressor for one of ENCODINGS."""
    if encoding == "gzip":
        return _Gzip()
    if encoding == "br":
        return _Brotli()
    if encoding == "zstd":
        return _Zstd()
    raise ValueError(f"unknown content encoding {encoding!r}")


def negotiate(accept_encoding: str | None) -> str | None:
    """The coding to answer with for an ``Accept-Encoding`` header; None for identity.

    q-values decide, then our preference (zstd, br, gzip); ``*`` stands for
    any coding not named; ``q=0`` refuses a coding (RFC 9110 section 12.5.3).

    >>> negotiate("gzip, deflate, br, zstd")
    'zstd'
    >>> negotiate("gzip;q=1.0, br;q=0.5, *;q=0")
    'gzip'
    >>> negotiate("identity") is None
    True
    """
    if not accept_encoding:
        return None
    named: dict[str, float] = {}
    wildcard: float | None = None
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        if not coding:
            continue
        quality = _quality(params)
        if coding == "*":
            wildcard = quality
        else:
            named[coding] = quality
    best: tuple[float, int] | None = None
    chosen: str | None = None
    for rank, encoding in enumerate(ENCODINGS):
        quality = named.get(encoding, wildcard if wildcard is not None else 0.0)
        if quality <= 0:
            continue
        score = (quality, -rank)
        if best is None or score > best:
            best, chosen = score, encoding
    return chosen


def _quality(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value.strip())
            except ValueError:
                return 0.0
            return quality if 0.0 <= quality <= 1.0 else 0.0
    return 1.0


async def compress_stream(
    chunks: AsyncGenerator[bytes, None], encoding: str
) -> AsyncGenerator[bytes, None]:
    """``chunks`` compressed with ``encoding``; big chunks are compressed in a thread."""
    encoder = make_encoder(encoding)
    async with aclosing(chunks):
        async for chunk in chunks:
            if len(chunk) >= _THREAD_BYTES:
                out = await asyncio.to_thread(encoder.compress, chunk)
            else:
                out = encoder.compress(chunk)
            if out:
                yield out
    tail = encoder.finish()
    if tail:
        yield tail
