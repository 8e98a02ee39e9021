"""An upstream that answers, but only after a delay: a model thinking for a while, a
PACS slow to its first byte. Runs in threads of the test process.

    with delayed_server(2.0, b'{"ok": true}') as slow:
        ...  # slow.url answers every request 2 s after reading it
        slow.received.wait(5)  # set once a request has been read
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

from harness import LOOPBACK


@dataclass
class DelayedServer:
    url: str
    received: threading.Event = field(default_factory=threading.Event)
    requests: int = 0


def _read_request(connection: socket.socket) -> bool:
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


@contextmanager
def delayed_server(
    delay: float,
    body: bytes,
    *,
    status_line: str = "200 OK",
    content_type: str = "application/json",
) -> Iterator[DelayedServer]:
    """Answers each request with ``body`` ``delay`` seconds after reading it."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(256)
    listener.settimeout(0.2)
    server = DelayedServer(f"http://{LOOPBACK}:{listener.getsockname()[1]}")
    stop = threading.Event()
    response = (
        f"HTTP/1.1 {status_line}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body

    def serve(connection: socket.socket) -> None:
        with connection, suppress(OSError):
            connection.settimeout(delay + 30)
            if not _read_request(connection):
                return
            server.requests += 1
            server.received.set()
            if stop.wait(delay):
                return
            connection.sendall(response)

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(timeout=2)
        listener.close()
