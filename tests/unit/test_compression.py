"""Accept-Encoding negotiation and the streaming compressors."""

from __future__ import annotations

import gzip
from collections.abc import AsyncGenerator

import brotli
import pytest
import zstandard

from model_proxy.web.compression import ENCODINGS, compress_stream, negotiate


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("identity", None),
        ("deflate", None),
        ("gzip", "gzip"),
        ("GZIP", "gzip"),
        ("gzip, deflate", "gzip"),
        ("gzip, deflate, br", "br"),
        ("gzip, deflate, br, zstd", "zstd"),  # a current browser
        ("br;q=0.9, gzip", "gzip"),
        ("zstd;q=0, br;q=0.1, gzip;q=0.05", "br"),
        ("gzip;q=0, *", "zstd"),
        ("*;q=0.5, br;q=0.8", "br"),
        ("*;q=0", None),
        ("gzip;q=bogus, br", "br"),
        ("gzip;q=1.5", None),
        (" gzip ; q=0.3 ,, ", "gzip"),
    ],
)
def test_negotiation_follows_q_values_then_our_preference(
    header: str | None, expected: str | None
) -> None:
    assert negotiate(header) == expected


def decompress(data: bytes, encoding: str) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "br":
        out: bytes = brotli.decompress(data)
        return out
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


async def pieces(data: bytes, sizes: list[int]) -> AsyncGenerator[bytes, None]:
    start = 0
    for size in sizes:
        yield data[start : start + size]
        start += size
    yield data[start:]


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_compressed_stream_round_trips_and_masks_shrink(encoding: str) -> None:
    row = b"[" + b",".join(b"1" if 100 < x < 400 else b"0" for x in range(512)) + b"]"
    mask = b'{"points":[' + b",".join([row] * 512) + b"]}"
    document = b"[" + b",".join([mask] * 8) + b"]"
    # Small chunks are compressed inline, big ones in a thread: both paths run.
    sizes = [1, 100, 5000, 300_000, 2_000_000]
    out = b"".join([chunk async for chunk in compress_stream(pieces(document, sizes), encoding)])
    assert decompress(out, encoding) == document
    assert len(out) * 50 < len(document)  # gzip 1: ~80x, br and zstd: more


@pytest.mark.anyio
@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_empty_stream_is_a_valid_empty_encoding(encoding: str) -> None:
    out = b"".join([chunk async for chunk in compress_stream(pieces(b"", []), encoding)])
    assert decompress(out, encoding) == b""
