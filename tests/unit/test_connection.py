"""The HTTP/1.1 connection under the outbound clients (upstream/connection.py), against
real sockets: bodies out without h11's join, bodies in by Content-Length, chunked
framing or the server's close, and when a connection may be used again."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator, Iterable
from contextlib import suppress

import httpx
import pytest
from loopback_servers import (  # anyio_backend: a fixture, both event loops
    anyio_backend,  # noqa: F401
    asyncio_server,
    scripted,
    slow_reading_server,
    timeouts,
)

from model_proxy.upstream.clients import make_client
from model_proxy.upstream.network import AsyncioStream

MiB = 1024 * 1024


@pytest.mark.anyio
async def test_chunks_from_a_reused_buffer_arrive_intact_at_a_slow_reader() -> None:
    # The pipeline yields views of buffers it reuses as soon as the next chunk is
    # asked for; write_pieces must not return while any of it is still queued.
    rng = random.Random(7)
    pieces = [rng.randbytes(rng.choice([1, 70_000, 300_000, 2 * MiB])) for _ in range(24)]
    expected = hashlib.sha256(b"".join(pieces)).hexdigest()
    buffer = bytearray(2 * MiB)

    async def body() -> AsyncIterator[bytes]:
        for piece in pieces:
            buffer[: len(piece)] = piece
            yield memoryview(buffer)[: len(piece)]  # type: ignore[misc]
            buffer[:] = bytes(len(buffer))  # the next chunk overwrites the buffer

    with slow_reading_server() as (url, digests):
        async with make_client(tls_verify=True, timeouts=timeouts()) as client:
            response = await client.post(url, content=body())
    assert response.status_code == 200
    assert response.text == expected == digests[0]


@pytest.mark.anyio
async def test_large_chunks_skip_h11s_join_and_small_ones_go_with_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    written: list[list[int]] = []
    original = AsyncioStream.write_pieces

    async def spy(
        self: AsyncioStream, pieces: Iterable[bytes], timeout: float | None = None
    ) -> None:
        pieces = list(pieces)
        written.append([len(piece) for piece in pieces])
        await original(self, pieces, timeout)

    monkeypatch.setattr(AsyncioStream, "write_pieces", spy)

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 100
        yield b"y" * (256 * 1024)

    with slow_reading_server(pause=0) as (url, digests):
        async with make_client(tls_verify=True, timeouts=timeouts()) as client:
            response = await client.post(url, content=body())
    assert response.text == digests[0] == hashlib.sha256(b"x" * 100 + b"y" * 256 * 1024).hexdigest()
    # One write: the small chunk held, then the large one as chunk header, the
    # data object itself, trailer.
    assert written == [[len(b"64\r\n"), 100, 2, len(b"40000\r\n"), 256 * 1024, 2]]


@pytest.mark.anyio
async def test_a_held_small_chunk_is_copied_before_its_buffer_is_reused() -> None:
    # As models/pipeline.py does: a chunk is a view of a buffer that is written
    # again once the next chunk has been asked for.
    buffer = bytearray(b"a" * 100)

    async def body() -> AsyncIterator[bytes]:
        for letter in b"bcd":
            yield memoryview(buffer)  # type: ignore[misc]
            buffer[:] = bytes([letter]) * 100
        yield b"e" * (128 * 1024)
        yield b"f" * 10  # small and last: sent with the end of the body

    expected = b"a" * 100 + b"b" * 100 + b"c" * 100 + b"e" * 128 * 1024 + b"f" * 10
    with slow_reading_server(pause=0) as (url, digests):
        async with make_client(tls_verify=True, timeouts=timeouts()) as client:
            response = await client.post(url, content=body())
    assert response.text == digests[0] == hashlib.sha256(expected).hexdigest()


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=value\r\nhello\r\n1\r\n \r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n"
)


@pytest.mark.anyio
async def test_a_chunked_body_split_anywhere_arrives_whole_and_the_connection_is_reused() -> None:
    connections: list[int] = []
    answers = [CHUNKED, CHUNKED]
    async with (
        asyncio_server(scripted(answers, connections)) as port,
        make_client(tls_verify=True, timeouts=timeouts()) as client,
    ):
        first = await client.get(f"http://127.0.0.1:{port}/")
        second = await client.get(f"http://127.0.0.1:{port}/")
    assert first.content == second.content == b"hello 0123456789abcdef"
    assert len(connections) == 1


@pytest.mark.anyio
async def test_many_chunks_in_one_read() -> None:
    parts = [random.Random(index).randbytes(index % 50 + 1) for index in range(3000)]
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer += b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in parts) + b"0\r\n\r\n"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()

    async with (
        asyncio_server(handler) as port,
        make_client(tls_verify=True, timeouts=timeouts()) as client,
    ):
        response = await client.get(f"http://127.0.0.1:{port}/")
    assert response.content == b"".join(parts)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    ],
    ids=["bad-size", "data-longer-than-size", "cut-short"],
)
async def test_a_broken_chunked_body_is_a_remote_protocol_error(answer: bytes) -> None:
    connections: list[int] = []
    async with (
        asyncio_server(scripted([answer], connections)) as port,
        make_client(tls_verify=True, timeouts=timeouts()) as client,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"http://127.0.0.1:{port}/")


@pytest.mark.anyio
async def test_informational_head_and_no_content_answers_keep_the_connection() -> None:
    connections: list[int] = []
    answers = [
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",  # to a HEAD: no body follows
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",  # a HEAD, streamed, not read
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nend",
    ]
    async with (
        asyncio_server(scripted(answers, connections)) as port,
        make_client(tls_verify=True, timeouts=timeouts()) as client,
    ):
        url = f"http://127.0.0.1:{port}/"
        assert (await client.get(url)).content == b"ok"
        head = await client.head(url)
        assert head.headers["content-length"] == "1000" and head.content == b""
        assert (await client.get(url)).status_code == 204
        async with client.stream("HEAD", url) as streamed:
            assert streamed.headers["content-length"] == "7"
        assert (await client.get(url)).content == b"end"
    assert len(connections) == 1


@pytest.mark.anyio
async def test_a_body_ended_by_the_servers_close() -> None:
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil the server ")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"closes")  # then asyncio_server closes the connection

    async with (
        asyncio_server(handler) as port,
        make_client(tls_verify=True, timeouts=timeouts()) as client,
    ):
        url = f"http://127.0.0.1:{port}/"
        assert (await client.get(url)).content == b"until the server closes"
        assert (await client.get(url)).content == b"until the server closes"
    assert len(connections) == 2


@pytest.mark.anyio
async def test_a_body_left_unread_closes_its_connection() -> None:
    connections: list[int] = []
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + bytes(100000)
    answers = [big, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        with suppress(asyncio.IncompleteReadError, ConnectionError):
            while answers:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answers.pop(0))
                await writer.drain()

    async with (
        asyncio_server(handler) as port,
        make_client(tls_verify=True, timeouts=timeouts()) as client,
    ):
        url = f"http://127.0.0.1:{port}/"
        async with client.stream("GET", url) as response:
            async for _ in response.aiter_raw():
                break  # leave the rest unread
        assert (await client.get(url)).content == b"ok"
    assert len(connections) == 2
