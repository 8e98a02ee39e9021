"""Servers on loopback for the network layer's unit tests (test_network.py,
test_connection.py): raw enough to read slowly, answer byte by byte, close idle
connections or stay silent."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from typing import Any

import h11
import pytest

from model_proxy.upstream.clients import Timeouts


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


async def closed(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()


def scripted(answers: list[bytes], connections: list[int]) -> Handler:
    """A server that answers each request with the next of ``answers``, written in
    pieces of 7 bytes with pauses (so that every boundary falls between reads)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while answers:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            answer = answers.pop(0)
            for start in range(0, len(answer), 7):
                writer.write(answer[start : start + 7])
                await writer.drain()
                await asyncio.sleep(0.001)

    return handler
