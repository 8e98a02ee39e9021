"""The network layer under the outbound clients (upstream/network.py and
upstream/transport.py), against real sockets.

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
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpcore
import httpx
import pytest
from loopback_servers import (  # anyio_backend: a fixture, both event loops
    anyio_backend,  # noqa: F401
    asyncio_server,
    closed,
    timeouts,
)

from model_proxy.cli.certificates import generate_self_signed
from model_proxy.upstream.clients import make_client
from model_proxy.upstream.network import READ_BYTES, AsyncioBackend, AsyncioStream

MiB = 1024 * 1024


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
async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.1)
        await closed(writer)  # a keep-alive timeout shorter than the client's

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


# --- keep-alive ------------------------------------------------------------------------


@contextmanager
def descriptors_in_use_below(limit: int = 1024) -> Iterator[None]:
    """Every file descriptor below ``limit`` in use, so that new sockets get higher
    ones; RLIMIT_NOFILE's soft limit raised for the while if it is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = limit + 256
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"RLIMIT_NOFILE's hard limit {hard} is below {wanted}")
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    held: list[int] = []
    try:
        # open() takes the lowest free descriptor: once it returns limit - 1, all
        # below are taken.
        while not held or held[-1] < limit - 1:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def socket_fd(response: httpx.Response) -> int:
    fd: int = response.extensions["network_stream"].get_extra_info("socket").fileno()
    return fd


@pytest.mark.anyio
@pytest.mark.parametrize("server_closes", [False, True], ids=["kept-alive", "server-closes"])
async def test_keep_alive_with_descriptors_past_1024(server_closes: bool) -> None:
    # select() cannot take a descriptor of 1024 or more: the readability check once
    # took every such pooled connection for one the server had closed.
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        while not reader.at_eof():
            with suppress(asyncio.IncompleteReadError):
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                if server_closes:
                    await asyncio.sleep(0.5)  # the client sees the connection open first
                    return  # asyncio_server closes the connection

    with descriptors_in_use_below(1024):
        async with (
            asyncio_server(handler) as port,
            make_client(tls_verify=True, timeouts=timeouts()) as client,
        ):
            first = await client.get(f"http://127.0.0.1:{port}/")
            assert socket_fd(first) >= 1024
            await asyncio.sleep(1.0)  # the server's close, if any, arrives
            second = await client.get(f"http://127.0.0.1:{port}/")
    assert first.text == second.text == "ok"
    assert connections == (2 if server_closes else 1)


@pytest.mark.anyio
async def test_connections_are_asyncio_streams() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with (
        asyncio_server(handler) as port,
        make_client(tls_verify=True, timeouts=timeouts()) as client,
    ):
        response = await client.get(f"http://127.0.0.1:{port}/")
    assert isinstance(response.extensions["network_stream"], AsyncioStream)


@pytest.mark.anyio
async def test_a_malformed_response_is_httpxs_remote_protocol_error() -> None:
    # The transport translates httpcore's exceptions as httpx's own does:
    # upstream/clients.py's translated() and is_transient() rely on httpx's types.
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async with (
        asyncio_server(handler) as port,
        make_client(tls_verify=True, timeouts=timeouts()) as client,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"http://127.0.0.1:{port}/")


@pytest.mark.anyio
async def test_a_response_cut_short_is_httpxs_remote_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        await writer.drain()

    async with (
        asyncio_server(handler) as port,
        make_client(tls_verify=True, timeouts=timeouts()) as client,
        client.stream("GET", f"http://127.0.0.1:{port}/") as response,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()


def test_no_class_of_httpx_httpcore_or_h11_is_patched() -> None:
    # The layer plugs in through public interfaces only (transport.py, connection.py).
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
