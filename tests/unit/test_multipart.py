"""The incremental multipart/related decoder, fed every way a network can split a stream."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

import pytest

from model_proxy.pacs.multipart import (
    MalformedMultipart,
    MultipartDecoder,
    boundary_from_content_type,
)

BOUNDARY = "bnd-7d3f"
DELIMITER = b"\r\n--" + BOUNDARY.encode()

# Bodies that look like the delimiter without being it (RFC 2046 only forbids
# CRLF + "--" + boundary inside a part).
TRICKY_BODIES = [
    b"",
    b"--",
    b"\r\n",
    b"\r",
    b"\r\n\r\n",
    b"--" + BOUNDARY.encode(),  # the dash-boundary without the CRLF before it
    b"x--" + BOUNDARY.encode() + b"--\r\n",
    b"\r\n--" + BOUNDARY.encode()[:-1],  # the delimiter minus its last byte
    b"ends with a partial delimiter\r\n--bnd",
    b"ends with a CR\r",
    b"\r\n-\r\n--\r\n--b\r\n--bn",
    bytes(range(256)) * 3,
]


def build(
    bodies: Sequence[bytes],
    *,
    headers: Sequence[Sequence[str]] | None = None,
    preamble: bytes = b"",
    epilogue: bytes = b"",
    leading_crlf: bool = False,
    padding: bytes = b"",
) -> bytes:
    """A multipart/related stream holding ``bodies``; default headers are DICOM ones."""
    dash = b"--" + BOUNDARY.encode()
    out = bytearray(preamble)
    if leading_crlf or preamble:
        out += b"\r\n"
    for index, body in enumerate(bodies):
        if index:
            out += b"\r\n"
        out += dash + padding + b"\r\n"
        lines = ["Content-Type: application/dicom"] if headers is None else headers[index]
        for line in lines:
            out += line.encode("latin-1") + b"\r\n"
        out += b"\r\n" + body
    out += b"\r\n" + dash + b"--" + epilogue
    return bytes(out)


def decode(stream: bytes, chunk_sizes: Iterable[int], **kwargs: int) -> list[bytes]:
    decoder = MultipartDecoder(BOUNDARY, **kwargs)
    parts: list[bytes] = []
    position = 0
    for size in chunk_sizes:
        if position >= len(stream):
            break
        parts += decoder.feed(stream[position : position + size])
        position += size
    assert position >= len(stream), "not enough chunk sizes for the stream"
    decoder.close()
    assert decoder.done
    return parts


def ones() -> Iterable[int]:
    while True:
        yield 1


def random_sizes(seed: int, low: int = 1, high: int = 97) -> Iterable[int]:
    rng = random.Random(seed)
    while True:
        yield rng.randint(low, high)


# --- chunking -------------------------------------------------------------------


def test_one_byte_at_a_time_gives_identical_parts() -> None:
    stream = build(TRICKY_BODIES)
    assert decode(stream, ones()) == TRICKY_BODIES


@pytest.mark.parametrize("seed", range(20))
def test_random_chunk_sizes_give_identical_parts(seed: int) -> None:
    rng = random.Random(1000 + seed)
    bodies = [rng.randbytes(rng.randint(0, 3000)) for _ in range(rng.randint(1, 6))]
    bodies += rng.sample(TRICKY_BODIES, 4)
    rng.shuffle(bodies)
    assert not any(DELIMITER in body for body in bodies)
    stream = build(bodies, preamble=b"preamble" if seed % 2 else b"", epilogue=b"\r\nbye")
    assert decode(stream, random_sizes(seed)) == bodies


def test_every_split_point_of_a_small_stream() -> None:
    bodies = [b"--\r\n--bnd", b"\r\n--" + BOUNDARY.encode()[:3], b"last\r"]
    stream = build(bodies, preamble=b"pre", epilogue=b"post")
    for split in range(len(stream) + 1):
        decoder = MultipartDecoder(BOUNDARY)
        parts = decoder.feed(stream[:split]) + decoder.feed(stream[split:])
        decoder.close()
        assert parts == bodies, f"split at {split}"


def test_whole_stream_in_one_chunk_returns_every_part_at_once() -> None:
    bodies = [b"one", b"two", b"three"]
    decoder = MultipartDecoder(BOUNDARY)
    assert decoder.feed(build(bodies)) == bodies
    assert decoder.done


def test_a_part_is_returned_as_soon_as_its_delimiter_is_complete() -> None:
    stream = build([b"first", b"second"])
    end_of_first = stream.index(DELIMITER, stream.index(b"first")) + len(DELIMITER)
    decoder = MultipartDecoder(BOUNDARY)
    assert decoder.feed(stream[: end_of_first - 1]) == []
    assert decoder.feed(stream[end_of_first - 1 : end_of_first]) == [b"first"]
    assert decoder.feed(stream[end_of_first:]) == [b"second"]


# --- framing variants -------------------------------------------------------------


@pytest.mark.parametrize("leading_crlf", [False, True])
def test_first_delimiter_with_or_without_crlf(leading_crlf: bool) -> None:
    stream = build([b"a", b"b"], leading_crlf=leading_crlf)
    assert stream.startswith(b"\r\n--" if leading_crlf else b"--")
    assert decode(stream, [len(stream)]) == [b"a", b"b"]
    assert decode(stream, ones()) == [b"a", b"b"]


def test_preamble_and_epilogue_are_ignored() -> None:
    preamble = b"This is a multi-part message.\r\n--not-the-boundary\r\n--" + BOUNDARY.encode()[:2]
    epilogue = b"\r\nepilogue with a delimiter: \r\n--" + BOUNDARY.encode() + b"\r\ngarbage"
    stream = build([b"body"], preamble=preamble, epilogue=epilogue)
    assert decode(stream, ones()) == [b"body"]
    assert decode(stream, random_sizes(7)) == [b"body"]


def test_data_fed_after_the_close_delimiter_is_ignored() -> None:
    decoder = MultipartDecoder(BOUNDARY)
    assert decoder.feed(build([b"x"])) == [b"x"]
    assert decoder.feed(b"\r\n--" + BOUNDARY.encode() + b"\r\n\r\nmore\r\n") == []
    decoder.close()


@pytest.mark.parametrize("padding", [b" ", b"\t", b" \t  "])
def test_transport_padding_after_a_delimiter(padding: bytes) -> None:
    stream = build([b"a", b"b"], padding=padding)
    assert decode(stream, ones()) == [b"a", b"b"]


def test_parts_without_headers() -> None:
    bodies = [b"plain", b"", b"\r\nstarts with CRLF"]
    stream = build(bodies, headers=[[], [], []])
    assert decode(stream, ones()) == bodies
    decoder = MultipartDecoder(BOUNDARY)
    assert decoder.feed(stream) == bodies
    assert decoder.part_headers == [{}, {}, {}]


def test_headers_are_parsed_and_content_length_does_not_change_the_body() -> None:
    bodies = [b"0123456789", b"x\r\n--y"]
    headers = [
        ["Content-Type: application/dicom", "Content-Length: 10"],
        ["content-type:application/dicom; transfer-syntax=1.2.840.10008.1.2.1", "X-Odd:  v "],
    ]
    decoder = MultipartDecoder(BOUNDARY)
    parts: list[bytes] = []
    for byte in build(bodies, headers=headers):
        parts += decoder.feed(bytes([byte]))
    decoder.close()
    assert parts == bodies
    assert decoder.part_headers == [
        {"content-type": "application/dicom", "content-length": "10"},
        {
            "content-type": "application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
            "x-odd": "v",
        },
    ]


def test_zero_parts() -> None:
    assert decode(b"--" + BOUNDARY.encode() + b"--\r\n", ones()) == []


def test_boundary_with_special_characters() -> None:
    boundary = "----=_Part_0.1'()+_,-./:=?"
    body = b"\r\n--" + boundary.encode()[:-1] + b"!"
    stream = b"--" + boundary.encode() + b"\r\n\r\n" + body + b"\r\n--" + boundary.encode() + b"--"
    decoder = MultipartDecoder(boundary)
    parts: list[bytes] = []
    for byte in stream:
        parts += decoder.feed(bytes([byte]))
    decoder.close()
    assert parts == [body]


# --- errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "cut",
    [
        b"",  # nothing at all
        b"preamble only",
        b"--" + BOUNDARY.encode(),  # ends right after a delimiter
        b"--" + BOUNDARY.encode() + b"\r\nContent-Type: appl",  # inside headers
        b"--" + BOUNDARY.encode() + b"\r\n\r\nhalf a part",  # inside a body
        b"--" + BOUNDARY.encode() + b"\r\n\r\nbody\r\n--" + BOUNDARY.encode()[:-1],
        b"--" + BOUNDARY.encode() + b"\r\n\r\nbody\r\n--" + BOUNDARY.encode() + b"-",
    ],
)
def test_truncated_stream_raises_on_close(cut: bytes) -> None:
    decoder = MultipartDecoder(BOUNDARY)
    decoder.feed(cut)
    assert not decoder.done
    with pytest.raises(MalformedMultipart, match="ended"):
        decoder.close()


def test_truncated_after_complete_parts_keeps_them_but_close_raises() -> None:
    stream = build([b"complete", b"cut short"])
    decoder = MultipartDecoder(BOUNDARY)
    parts = decoder.feed(stream[: stream.index(b"cut short") + 3])
    assert parts == [b"complete"]
    with pytest.raises(MalformedMultipart, match="truncated"):
        decoder.close()


@pytest.mark.parametrize("after", [b"X\r\n", b"garbage\r\n\r\nbody", b" x \r\n"])
def test_garbage_after_a_delimiter(after: bytes) -> None:
    stream = b"--" + BOUNDARY.encode() + after
    with pytest.raises(MalformedMultipart, match="garbage"):
        MultipartDecoder(BOUNDARY).feed(stream)
    decoder = MultipartDecoder(BOUNDARY)
    with pytest.raises(MalformedMultipart, match="garbage"):
        for byte in stream:
            decoder.feed(bytes([byte]))


def test_endless_garbage_after_a_delimiter_without_crlf() -> None:
    decoder = MultipartDecoder(BOUNDARY)
    decoder.feed(b"--" + BOUNDARY.encode() + b"x" * 1000)
    with pytest.raises(MalformedMultipart, match="garbage"):
        decoder.feed(b"x" * 100)


def test_a_stream_without_any_boundary_is_rejected_after_a_bound() -> None:
    decoder = MultipartDecoder(BOUNDARY)
    with pytest.raises(MalformedMultipart, match="no multipart boundary"):
        for _ in range(100):
            decoder.feed(b"<html>not multipart</html>\n" * 100)


def test_endless_headers_are_rejected() -> None:
    decoder = MultipartDecoder(BOUNDARY)
    decoder.feed(b"--" + BOUNDARY.encode() + b"\r\n")
    with pytest.raises(MalformedMultipart, match="too long"):
        for _ in range(100):
            decoder.feed(b"X-Header: " + b"v" * 1000 + b"\r\n")


def test_malformed_header_line() -> None:
    stream = b"--" + BOUNDARY.encode() + b"\r\nno colon here\r\n\r\nbody\r\n--" + BOUNDARY.encode()
    with pytest.raises(MalformedMultipart, match="header line"):
        MultipartDecoder(BOUNDARY).feed(stream)


def test_max_part_bytes_rejects_a_large_part_arriving_in_chunks() -> None:
    stream = build([b"small", b"y" * 10_000])
    decoder = MultipartDecoder(BOUNDARY, max_part_bytes=1000)
    parts: list[bytes] = []
    with pytest.raises(MalformedMultipart, match="limit of 1000 bytes"):
        for start in range(0, len(stream), 256):
            parts += decoder.feed(stream[start : start + 256])
    assert parts == [b"small"]
    # Memory stayed bounded: the decoder gave up soon after passing the limit.
    assert decoder.buffered_bytes <= 1000 + 256


def test_max_part_bytes_accepts_parts_within_the_limit() -> None:
    bodies = [b"a" * 900, b"b" * 10, b""]
    for sizes in (ones(), random_sizes(3, 1, 300), [10**6]):
        assert decode(build(bodies), sizes, max_part_bytes=1000) == bodies


def test_a_part_of_exactly_max_part_bytes_is_accepted_whatever_the_chunking() -> None:
    bodies = [b"z" * 100]
    assert decode(build(bodies), ones(), max_part_bytes=100) == bodies


def test_a_part_over_max_part_bytes_is_rejected_even_in_one_chunk() -> None:
    with pytest.raises(MalformedMultipart):
        MultipartDecoder(BOUNDARY, max_part_bytes=100).feed(build([b"z" * 101]))


# --- large parts, linear scanning ------------------------------------------------------


def test_twenty_megabyte_part_in_64k_chunks_is_byte_exact_and_held_uncopied() -> None:
    rng = random.Random(20)
    big = rng.randbytes(20 * 1024 * 1024)
    assert DELIMITER not in big
    stream = build([b"head", big, b"tail"])
    chunk = 64 * 1024
    decoder = MultipartDecoder(BOUNDARY)
    parts: list[bytes] = []
    body_start = stream.index(big)
    checked = 0
    for start in range(0, len(stream), chunk):
        piece = stream[start : start + chunk]
        parts += decoder.feed(piece)
        fed = start + chunk
        if body_start + chunk < fed < body_start + len(big):
            # Mid-part: what arrived is held as views of the chunks, not copied.
            assert decoder.buffered_bytes == fed - body_start
            assert decoder._pieces[-1].obj is piece
            checked += 1
    decoder.close()
    assert checked > 300
    assert len(parts) == 3
    assert parts[0] == b"head"
    assert parts[1] == big
    assert parts[2] == b"tail"


def test_a_delimiter_split_at_every_point_between_two_large_chunks() -> None:
    bodies = [b"a" * 5000, b"b" * 7000]
    stream = build(bodies)
    delimiter_at = stream.index(DELIMITER, stream.index(b"a" * 5000))
    for split in range(delimiter_at - 2, delimiter_at + len(DELIMITER) + 2):
        decoder = MultipartDecoder(BOUNDARY)
        parts = decoder.feed(stream[:1000]) + decoder.feed(stream[1000:split])
        parts += decoder.feed(stream[split:])
        decoder.close()
        assert parts == bodies, split


def test_a_delimiter_spread_over_many_tiny_chunks_after_a_large_one() -> None:
    body = bytes(range(256)) * 40
    stream = build([body, b"next"])
    end = stream.index(body) + len(body)
    decoder = MultipartDecoder(BOUNDARY)
    parts = decoder.feed(stream[: end - 3])
    for index in range(end - 3, len(stream)):
        parts += decoder.feed(stream[index : index + 1])
    decoder.close()
    assert parts == [body, b"next"]


# --- Content-Type ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ('multipart/related; type="application/dicom"; boundary=abc', "abc"),
        ('multipart/related; type="application/dicom"; boundary="a b;c"', "a b;c"),
        ("multipart/related;boundary=abc;type=application/dicom", "abc"),
        ('Multipart/Related; BOUNDARY="XyZ"', "XyZ"),
        ("multipart/related; boundary=----=_Part_1_2.3", "----=_Part_1_2.3"),
        ('multipart/mixed; boundary="mixed"', "mixed"),
        ("multipart/related", None),
        ('multipart/related; boundary=""', None),
        ('multipart/related; type="application/dicom"', None),
        ("application/dicom", None),
        ("application/dicom; boundary=abc", None),
        ("text/html; charset=utf-8", None),
        ("", None),
    ],
)
def test_boundary_from_content_type(content_type: str, expected: str | None) -> None:
    assert boundary_from_content_type(content_type) == expected
