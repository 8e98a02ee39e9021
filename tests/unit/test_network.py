"""The network layer under the outbound clients (upstream/network.py), against real sockets.

The servers are small asyncio or threaded servers on loopback: they can be made
to read slowly, close idle connections or stay silent, which is what these
tests are about. The integration tests run the same layer against Orthanc, the
models and the TLS terminators.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import resource
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, nullcontext, suppress
from pathlib import Path
from typing import Any

import h11
import httpcore
import httpx
import pytest

from model_proxy.cli.certificates import generate_self_signed
from model_proxy.upstream.clients import Timeouts, make_client
from model_proxy.upstream.network import READ_BYTES, AsyncioBackend, AsyncioStream

MiB = 1024 * 1024


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    """Both loops: the proxy runs on uvloop, whose transports differ in details."""
    backend: tuple[str, dict[str, bool]] = request.param
    return backend


def timeouts(idle: float = 5.0) -> Timeouts:
    return Timeouts(connect=5.0, idle=idle, probe=5.0)


# --- a raw HTTP/1.1 server in a thread: reads requests slowly, answers with a digest ---


@contextmanager
def slow_reading_server(pause: float = 0.002) -> Iterator[tuple[str, list[str]]]:
    """Answers each request with the SHA-256 of its (unchunked) body; reads its
    socket in small pieces with pauses, so the client's writes back up."""
    listener = socket.create_server(("127.0.0.1", 0))
    digests: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
                parser = h11.Connection(h11.SERVER)
                digest = hashlib.sha256()
                while True:
                    event = parser.next_event()
                    if event is h11.NEED_DATA:
                        time.sleep(pause)
                        parser.receive_data(conn.recv(32 * 1024))
                    elif isinstance(event, h11.Data):
                        digest.update(event.data)
                    elif isinstance(event, h11.EndOfMessage):
                        body = digest.hexdigest().encode()
                        digests.append(digest.hexdigest())
                        conn.sendall(
                            parser.send(
                                h11.Response(
                                    status_code=200,
                                    headers=[("Content-Length", str(len(body)))],
                                )
                            )
                            + parser.send(h11.Data(data=body))
                            + parser.send(h11.EndOfMessage())
                        )
                        parser.start_next_cycle()
                        digest = hashlib.sha256()
                    elif isinstance(event, h11.ConnectionClosed):
                        break

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", digests
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.mark.anyio
async def test_chunks_from_a_reused_buffer_arrive_intact_at_a_slow_reader() -> None:
    # The pipeline yields views of buffers it reuses as soon as the next chunk is
    # asked for: nothing of a chunk may still be waiting to be sent by then.
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


# --- reading --------------------------------------------------------------------------


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def asyncio_server(handler: Handler, **options: Any) -> AsyncIterator[int]:
    """A server on a free port; on leaving, waits for its handlers to end (so no
    connection outlives the test's event loop)."""
    handlers: list[asyncio.Task[None]] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        try:
            await handler(reader, writer)
        finally:
            await closed(writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0, **options)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()
        await asyncio.wait_for(asyncio.gather(*handlers, return_exceptions=True), 10)


@pytest.mark.anyio
async def test_a_read_hands_over_everything_buffered_up_to_read_bytes() -> None:
    sent = random.Random(1).randbytes(3 * MiB)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(sent)
        await writer.drain()

    async with asyncio_server(handler) as port:
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
        await asyncio.sleep(0.2)  # let it all arrive (the reader pauses at 2 MiB)
        sizes = []
        received = b""
        while data := await stream.read(64 * 1024, timeout=5):
            sizes.append(len(data))
            received += data
        await stream.aclose()
    assert received == sent
    # Far more than the 64 KiB asked for: whole deliveries, joined up to READ_BYTES.
    assert 12 * 64 * 1024 < max(sizes) <= READ_BYTES


@pytest.mark.anyio
async def test_reading_pauses_the_transport_when_nobody_reads() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(bytes(20 * MiB))
        with suppress(OSError):
            await writer.drain()

    async with asyncio_server(handler) as port:
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
        assert isinstance(stream, AsyncioStream)
        await asyncio.sleep(0.5)
        held = stream._protocol.buffered
        await stream.aclose()
    # The pause threshold plus at most one delivery (256 KiB on uvloop, 64 KiB on asyncio).
    assert 0 < held <= 2 * MiB + 256 * 1024


async def closed(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()


@pytest.mark.anyio
async def test_a_silent_server_gives_a_read_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1 << 16)
        await reader.read()  # until the client gives up and closes

    async with (
        asyncio_server(handler) as port,
        make_client(tls_verify=True, timeouts=timeouts(idle=0.3)) as client,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"http://127.0.0.1:{port}/")


@pytest.mark.anyio
async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    async with make_client(tls_verify=True, timeouts=timeouts()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"http://127.0.0.1:{port}/")


@pytest.mark.anyio
@pytest.mark.parametrize("many_files", [False, True], ids=["few-files", "past-1024-files"])
async def test_a_connection_the_server_closed_while_idle_is_not_reused(many_files: bool) -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.1)
        await closed(writer)  # a keep-alive timeout shorter than the client's

    with descriptors_past_1024() if many_files else nullcontext():
        async with (
            asyncio_server(handler) as port,
            make_client(tls_verify=True, timeouts=timeouts()) as client,
        ):
            first = await client.get(f"http://127.0.0.1:{port}/")
            await asyncio.sleep(0.3)
            second = await client.get(f"http://127.0.0.1:{port}/")
    assert first.text == second.text == "ok"
    assert connections == 2


@pytest.mark.anyio
async def test_when_the_server_closes_our_side_closes_and_its_data_stays_readable() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"last words")
        await writer.drain()

    async with asyncio_server(handler) as port:
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)
        assert isinstance(stream, AsyncioStream)
        await asyncio.sleep(0.2)
        # Not left in CLOSE_WAIT until someone looks at the connection again.
        assert stream._transport.is_closing()
        assert stream.get_extra_info("is_readable")
        assert await stream.read(64 * 1024, timeout=5) == b"last words"
        assert await stream.read(64 * 1024, timeout=5) == b""
        await stream.aclose()


@pytest.mark.anyio
async def test_tls_through_the_asyncio_backend(tmp_path: Path) -> None:
    cert, key = generate_self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    body = random.Random(2).randbytes(3 * MiB)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        received = await reader.readexactly(length)
        answer = hashlib.sha256(received).hexdigest().encode() + body
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
        await writer.drain()

    async with (
        asyncio_server(handler, ssl=server_context) as port,
        make_client(tls_verify=str(cert), timeouts=timeouts()) as client,
    ):
        sent = random.Random(3).randbytes(MiB)
        response = await client.post(f"https://localhost:{port}/", content=sent)
    assert response.content[:64].decode() == hashlib.sha256(sent).hexdigest()
    assert response.content[64:] == body


@pytest.mark.anyio
async def test_tls_with_an_untrusted_certificate_is_a_connect_error(tmp_path: Path) -> None:
    cert, key = generate_self_signed(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)

    async with (
        asyncio_server(handler, ssl=server_context) as port,
        make_client(tls_verify=True, timeouts=timeouts()) as client,
    ):
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(f"https://localhost:{port}/")


# --- many open files ------------------------------------------------------------------


@contextmanager
def descriptors_past_1024() -> Iterator[None]:
    """Holds open enough files that the next socket's descriptor is 1024 or more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2048 if hard == resource.RLIM_INFINITY else min(hard, 2048)
    if wanted < 1200:
        pytest.skip(f"the hard file limit ({hard}) is too low to open 1,100 files")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    held: list[int] = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.anyio
async def test_keep_alive_works_on_descriptors_past_1024() -> None:
    # select() refuses descriptors from 1024 on; taken for "the server closed it",
    # that made every pooled connection look dead once the proxy had many files open.
    connections = 0
    descriptors: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with suppress(asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

    with descriptors_past_1024():
        async with (
            asyncio_server(handler) as port,
            make_client(tls_verify=True, timeouts=timeouts()) as client,
        ):
            for _ in range(3):
                async with client.stream("GET", f"http://127.0.0.1:{port}/") as response:
                    stream = response.extensions["network_stream"]
                    descriptors.append(stream.get_extra_info("socket").fileno())
                    assert await response.aread() == b"ok"
                await asyncio.sleep(0.05)
    assert min(descriptors) >= 1024
    assert connections == 1  # one connection, reused


def test_no_class_of_httpx_httpcore_or_h11_is_patched() -> None:
    # The layer plugs in through public parameters only (transport.py).
    import h11

    make_client(tls_verify=True, timeouts=timeouts())
    for module in (httpx, httpcore, h11):
        for name in dir(module):
            cls = getattr(module, name)
            if not isinstance(cls, type):
                continue
            for attribute, value in vars(cls).items():
                owner = getattr(value, "__module__", None) or ""
                assert not owner.startswith("model_proxy"), f"{name}.{attribute} is patched"
