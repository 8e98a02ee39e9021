"""The socket plumbing that the test servers and relays share, in threads of the test
process: a loopback listener (``listening``), one request head read off a connection
(``read_head``), that head rewritten to one request per connection
(``close_after_response``), a one-way copy (``pump``) and one client connection passed
on to the real server (``Exchange``). faults.py and held_relays.py build on these."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from harness import LOOPBACK


@contextmanager
def listening(
    handle: Callable[[socket.socket], None], scheme: str = "http", *, backlog: int = 64
) -> Iterator[str]:
    """Accept loopback connections in a thread, each handled in a thread of its own.
    Yields the base URL; on exit stops accepting and closes the listener."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(backlog)
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=handle, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield f"{scheme}://{LOOPBACK}:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()


def port_of(url: str) -> int:
    """The port of a loopback base URL: ``port_of("http://127.0.0.1:8042/dicom-web")``
    is 8042."""
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def read_head(connection: socket.socket) -> tuple[bytes, bytes]:
    """The request line and headers (up to the blank line), and what followed them."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionError("the client closed before sending a request")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head + b"\r\n\r\n", rest


def close_after_response(head: bytes) -> bytes:
    """``head`` asking the server to close after its answer: one request per connection,
    so that each fault or hold applies to exactly one request."""
    lines = [
        line
        for line in head.rstrip(b"\r\n").split(b"\r\n")
        if not line.lower().startswith(b"connection:")
    ]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


def pump(source: socket.socket, sink: socket.socket, limit: int | None = None) -> None:
    """Copy ``source`` to ``sink`` until EOF (or ``limit`` bytes), then shut both down."""
    sent = 0
    try:
        while limit is None or sent < limit:
            chunk = source.recv(1 << 16)
            if not chunk:
                break
            if limit is not None:
                chunk = chunk[: limit - sent]
            sink.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


@dataclass
class Exchange:
    """One client connection to a relay, its request head already read (and rewritten
    by ``close_after_response``)."""

    client: socket.socket
    head: bytes
    rest: bytes
    target_port: int

    @classmethod
    def accept(cls, connection: socket.socket, target_port: int) -> Exchange:
        """Read the request head off ``connection``; one request per connection."""
        head, rest = read_head(connection)
        return cls(connection, close_after_response(head), rest, target_port)

    def relay(self, *, response_limit: int | None = None, first_byte_delay: float = 0) -> None:
        """Pass the exchange on to the real server; optionally hold its answer back
        for ``first_byte_delay`` seconds, or cut it after ``response_limit`` bytes."""
        with socket.create_connection((LOOPBACK, self.target_port)) as upstream:
            upstream.sendall(self.head + self.rest)
            forward = threading.Thread(target=pump, args=(self.client, upstream), daemon=True)
            forward.start()
            if first_byte_delay:
                time.sleep(first_byte_delay)
            pump(upstream, self.client, response_limit)
            forward.join(timeout=10)

    def drain_request_body(self) -> None:
        """Read a chunked request body to its end (a POST to a model)."""
        if b"chunked" not in self.head.lower():
            return
        data = self.rest
        while not data.endswith(b"0\r\n\r\n"):
            chunk = self.client.recv(1 << 20)
            if not chunk:
                return
            data = data[-16:] + chunk

    def answer(self, response: bytes) -> None:
        self.drain_request_body()
        self.client.sendall(response)
