"""Upstreams that follow a script for every request, in threads of the test process:
answer after a delay (a model thinking, a PACS slow to its first byte), cut the answer
short of its announced length, or hold the request until the caller gives up.

    with delayed_server(2.0, b'{"ok": true}') as slow:
        ...  # slow.url answers every request 2 s after reading it
        slow.received.wait(5)  # set once a request has been read
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from relay_sockets import listening


@dataclass
class ScriptedServer:
    url: str
    received: threading.Event = field(default_factory=threading.Event)
    requests: int = 0


def _read_request(connection: socket.socket) -> bool:
    """Read one request, its chunked body included; False if the caller went away."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return False
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].lower()
    if b"transfer-encoding: chunked" in head:
        while not data.endswith(b"0\r\n\r\n"):
            chunk = connection.recv(1 << 20)
            if not chunk:
                return False
            data = data[-16:] + chunk
    return True


def _response(status_line: str, content_type: str, body: bytes, length: int) -> bytes:
    head = (
        f"HTTP/1.1 {status_line}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


@contextmanager
def _scripted(script: Callable[[socket.socket, threading.Event], None]) -> Iterator[ScriptedServer]:
    """Run ``script(connection, stop)`` for every request once it has been read;
    ``stop`` is set when the server shuts down."""
    server = ScriptedServer(url="")  # the URL is known once it listens
    stop = threading.Event()

    def serve(connection: socket.socket) -> None:
        with connection, suppress(OSError):
            connection.settimeout(120)
            if not _read_request(connection):
                return
            server.requests += 1
            server.received.set()
            script(connection, stop)

    # A deeper backlog than the fault servers: the soak test has 200 clients on these.
    with listening(serve, backlog=512) as url:
        server.url = url
        try:
            yield server
        finally:
            stop.set()


@contextmanager
def delayed_server(
    delay: float,
    body: bytes,
    *,
    status_line: str = "200 OK",
    content_type: str = "application/json",
) -> Iterator[ScriptedServer]:
    """Answers each request with ``body`` ``delay`` seconds after reading it."""
    response = _response(status_line, content_type, body, len(body))

    def script(connection: socket.socket, stop: threading.Event) -> None:
        if not stop.wait(delay):
            connection.sendall(response)

    with _scripted(script) as server:
        yield server


@contextmanager
def cut_server(body: bytes, *, content_type: str, announced: int) -> Iterator[ScriptedServer]:
    """Answers 200 announcing ``announced`` bytes, sends ``body`` (fewer), then closes."""
    assert announced > len(body)
    response = _response("200 OK", content_type, body, announced)

    def script(connection: socket.socket, stop: threading.Event) -> None:
        connection.sendall(response)

    with _scripted(script) as server:
        yield server


@contextmanager
def silent_server() -> Iterator[ScriptedServer]:
    """Reads each request and never answers; lets go of the connection as soon as the
    caller closes it (so that thousands of abandoned requests hold no descriptor)."""

    def script(connection: socket.socket, stop: threading.Event) -> None:
        connection.settimeout(1.0)
        while not stop.is_set():
            try:
                if not connection.recv(65536):
                    return
            except TimeoutError:
                continue

    with _scripted(script) as server:
        yield server
