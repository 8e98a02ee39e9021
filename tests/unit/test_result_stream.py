"""The model's answer streamed to the viewer: the incremental unescaper of double-encoded
results, the first-window validation and the checks that remain once bytes are sent."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Sequence

import orjson
import pytest

from model_proxy.errors import ModelError
from model_proxy.models.result_stream import (
    FIRST_WINDOW_BYTES,
    BadJsonString,
    JsonStringUnescaper,
    ResultStream,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# Every kind of escape a JSON encoder may write, non-ASCII text kept raw and escaped,
# a surrogate pair (emoji), and the quotes and backslashes of nested JSON.
TRICKY_TEXT = (
    '{"1.2.3": {"note": "quote \\" backslash \\\\ slash / tab\\t", '
    '"name": "Łódź é 日本", "emoji": "😀 \U0001f9e0", "ctl": "\\u0001\\n\\r\\b\\f"}}'
)


def encodings_of(text: str) -> list[bytes]:
    """The string ``text`` as a JSON string, written by different encoders."""
    return [
        orjson.dumps(text),  # raw UTF-8, minimal escapes
        json.dumps(text).encode(),  # ASCII only: \\uXXXX and surrogate pairs
        json.dumps(text, ensure_ascii=False).encode(),
        json.dumps(text).replace("/", "\\/").encode(),  # the optional \\/ escape
    ]


def unescape_in_chunks(encoded: bytes, cuts: Sequence[int]) -> bytes:
    unescaper = JsonStringUnescaper()
    body = encoded[1:]  # after the opening quote
    edges = [0, *cuts, len(body)]
    out = b"".join(unescaper.feed(body[a:b]) for a, b in itertools.pairwise(edges))
    unescaper.finish()
    return out


@pytest.mark.parametrize("variant", range(4))
def test_unescaper_gives_the_inner_text_at_every_split_point(variant: int) -> None:
    encoded = encodings_of(TRICKY_TEXT)[variant]
    expected = TRICKY_TEXT.encode()
    body_length = len(encoded) - 1
    for cut in range(body_length + 1):
        assert unescape_in_chunks(encoded, [cut]) == expected, f"split at {cut}"
    # Two cuts close together split escapes and surrogate pairs in three.
    for cut in range(body_length - 12):
        for gap in (1, 2, 5, 7, 11):
            assert unescape_in_chunks(encoded, [cut, cut + gap]) == expected, (cut, gap)


def test_unescaper_byte_by_byte() -> None:
    for encoded in encodings_of(TRICKY_TEXT):
        cuts = list(range(1, len(encoded) - 1))
        assert unescape_in_chunks(encoded, cuts) == TRICKY_TEXT.encode()


def test_unescaper_accepts_whitespace_after_the_string() -> None:
    unescaper = JsonStringUnescaper()
    assert unescaper.feed(b'abc" \r\n') == b"abc"
    assert unescaper.feed(b"\t ") == b""
    unescaper.finish()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'\\x"', "invalid escape"),
        (b'\\u12G4"', "invalid \\u escape"),
        (b'\\uDE00"', "lone low surrogate"),
        (b'\\uD83Dx"', "lone high surrogate"),
        (b'\\uD83D\\n"', "lone high surrogate"),
        (b'\\uD83D\\u0041"', "followed by"),
        (b'a\x01b"', "control character"),
        (b'abc" x', "text follows"),
    ],
)
def test_unescaper_rejects_malformed_strings(body: bytes, message: str) -> None:
    unescaper = JsonStringUnescaper()
    with pytest.raises(BadJsonString, match=message.replace("\\", "\\\\")):
        for index in range(len(body)):  # byte by byte: errors found across chunks too
            unescaper.feed(body[index : index + 1])
        unescaper.finish()


@pytest.mark.parametrize("body", [b"abc", b"abc\\", b"abc\\u00", b"\\uD83D\\uDE"])
def test_unescaper_reports_a_cut_string(body: bytes) -> None:
    unescaper = JsonStringUnescaper()
    unescaper.feed(body)
    with pytest.raises(BadJsonString, match="not closed"):
        unescaper.finish()


# --- ResultStream -----------------------------------------------------------------------


async def chunked(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(data: bytes, *, size: int = 65536, limit: int = 1 << 30) -> bytes:
    stream = ResultStream(chunked(data, size), label="model m", max_bytes=limit)
    parts = [await stream.start()]
    parts += [chunk async for chunk in stream.chunks()]
    assert stream.bytes_out == sum(map(len, parts))
    return b"".join(parts)


def big_document() -> bytes:
    """A segmentation-like result well past the first window, with escapes in keys."""
    mask = [[(x // 7 + y // 5) % 2 for x in range(256)] for y in range(256)]
    document = {
        "1.2.3": {
            f"1.2.3.{i}": {"segments": [{"points": mask, "className": 'Lung "left" é😀'}]}
            for i in range(24)
        }
    }
    encoded = orjson.dumps(document)
    assert len(encoded) > 2 * FIRST_WINDOW_BYTES
    return encoded


@pytest.mark.anyio
@pytest.mark.parametrize("size", [997, 65536, 1 << 20])
async def test_big_plain_result_passes_through_byte_exact(size: int) -> None:
    document = big_document()
    assert await read_all(b"  " + document, size=size) == b"  " + document


@pytest.mark.anyio
@pytest.mark.parametrize("size", [1021, 65536, 1 << 20])
async def test_big_double_encoded_result_is_unwrapped_byte_exact(size: int) -> None:
    document = big_document()
    legacy = orjson.dumps(document.decode())
    assert await read_all(legacy, size=size) == document
    ascii_legacy = json.dumps(document.decode()).encode()  # \\uXXXX escapes throughout
    assert await read_all(ascii_legacy, size=size) == document


@pytest.mark.anyio
async def test_small_results_are_validated_whole_as_before() -> None:
    assert await read_all(b'{"a": 1}') == b'{"a": 1}'
    assert await read_all(b'"{\\"a\\": 1}"') == b'{"a": 1}'
    assert await read_all(b'"not json inside"') == b'"not json inside"'
    with pytest.raises(ModelError, match="not JSON") as caught:
        await read_all(b'{"a": 1')
    assert caught.value.code == "model_bad_response"
    with pytest.raises(ModelError, match="empty body"):
        await read_all(b"")


@pytest.mark.anyio
async def test_a_big_string_that_is_not_json_inside_is_passed_as_before() -> None:
    legacy = orjson.dumps("x" * (2 * FIRST_WINDOW_BYTES))
    assert await read_all(legacy) == legacy


@pytest.mark.anyio
async def test_big_answer_that_is_not_json_fails_before_anything_is_sent() -> None:
    stream = ResultStream(
        chunked(b"<html>" * FIRST_WINDOW_BYTES), label="model m", max_bytes=1 << 30
    )
    with pytest.raises(ModelError, match="model m: answered with a body that is not JSON"):
        await stream.start()


@pytest.mark.anyio
@pytest.mark.parametrize("legacy", [False, True])
async def test_a_cut_big_result_fails_after_the_start(legacy: bool) -> None:
    document = big_document()
    body = orjson.dumps(document.decode()) if legacy else document
    stream = ResultStream(chunked(body[: len(body) // 2]), label="model m", max_bytes=1 << 30)
    first = await stream.start()
    assert first
    with pytest.raises(ModelError, match="cut short") as caught:
        async for _ in stream.chunks():
            pass
    assert caught.value.code == "model_bad_response"


@pytest.mark.anyio
async def test_the_size_limit_holds_before_and_after_the_start() -> None:
    document = big_document()
    with pytest.raises(ModelError, match="larger than the limit") as caught:
        await read_all(document, limit=FIRST_WINDOW_BYTES // 2)
    assert caught.value.code == "model_result_too_large"
    with pytest.raises(ModelError, match="larger than the limit"):
        await read_all(document, limit=len(document) - 1)
    assert await read_all(document, limit=len(document)) == document
