"""Upstreams that misbehave in ways a real server cannot be made to: they hang, or
answer with a body that is not JSON; a relay that injects faults (refusals, 5xx, cut
connections, silence) into the exchanges with a real server; and a TLS terminator in
front of a real server (Orthanc 1.10's own HTTPS crashes on Debian's OpenSSL). Each
runs in threads of the test process."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

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


@contextmanager
def hanging_server() -> Iterator[str]:
    """Accepts connections and reads requests, but never answers. Yields its base URL."""
    held: list[socket.socket] = []
    with listening(held.append) as url:
        try:
            yield url
        finally:
            for connection in held:
                connection.close()


@contextmanager
def canned_http_server(status_line: str, body: bytes, content_type: str) -> Iterator[str]:
    """Answers every request with the same response once it has read the request
    (a chunked request body is drained first). Yields its base URL."""
    response = (
        f"HTTP/1.1 {status_line}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body

    def serve(connection: socket.socket) -> None:
        with connection:
            connection.settimeout(10)
            data = b""
            try:
                while b"\r\n\r\n" not in data:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                if b"chunked" in data.split(b"\r\n\r\n", 1)[0].lower():
                    while not data.endswith(b"0\r\n\r\n"):
                        chunk = connection.recv(1 << 20)
                        if not chunk:
                            break
                        data = data[-16:] + chunk
                connection.sendall(response)
            except OSError:
                return

    with listening(serve) as url:
        yield url


def closed_port_url() -> str:
    """A URL on a loopback port nothing listens on (connection refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port = sock.getsockname()[1]
    return f"http://{LOOPBACK}:{port}"


@contextmanager
def tls_terminator(target_url: str, cert: Path, key: Path) -> Iterator[str]:
    """HTTPS on a free loopback port, relayed as plain TCP to ``target_url``'s port,
    with the given certificate. Yields ``https://127.0.0.1:PORT``."""
    target_port = int(target_url.rsplit(":", 1)[1].split("/", 1)[0])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))

    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(1 << 16):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def relay(client: socket.socket) -> None:
        try:
            client.settimeout(10)
            secure = context.wrap_socket(client, server_side=True)
            secure.settimeout(None)
        except (OSError, ssl.SSLError):
            client.close()  # e.g. a client that refused our certificate
            return
        with secure, socket.create_connection((LOOPBACK, target_port)) as upstream:
            back = threading.Thread(target=pump, args=(upstream, secure), daemon=True)
            back.start()
            pump(secure, upstream)
            back.join(timeout=10)

    with listening(relay, scheme="https") as url:
        yield url


# --- a relay that injects faults into the exchanges with a real server -------------------


def _read_head(connection: socket.socket) -> tuple[bytes, bytes]:
    """The request line and headers (up to the blank line), and what followed them."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            raise ConnectionError("the client closed before sending a request")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head + b"\r\n\r\n", rest


def _close_after_response(head: bytes) -> bytes:
    """``head`` asking the server to close after its answer: one request per connection,
    so that each fault applies to exactly one request."""
    lines = [
        line
        for line in head.rstrip(b"\r\n").split(b"\r\n")
        if not line.lower().startswith(b"connection:")
    ]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n"


def _pump(source: socket.socket, sink: socket.socket, limit: int | None = None) -> None:
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
    """One client connection to a FaultyRelay, its request head already read."""

    client: socket.socket
    head: bytes
    rest: bytes
    target_port: int

    def relay(self, *, response_limit: int | None = None, first_byte_delay: float = 0) -> None:
        """Pass the exchange on to the real server; optionally hold its answer back
        for ``first_byte_delay`` seconds, or cut it after ``response_limit`` bytes."""
        with socket.create_connection((LOOPBACK, self.target_port)) as upstream:
            upstream.sendall(self.head + self.rest)
            forward = threading.Thread(target=_pump, args=(self.client, upstream), daemon=True)
            forward.start()
            if first_byte_delay:
                time.sleep(first_byte_delay)
            _pump(upstream, self.client, response_limit)
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


Fault = Callable[[Exchange], None]


def relay() -> Fault:
    """No fault: the real server answers."""
    return lambda exchange: exchange.relay()


def cut_after(response_bytes: int) -> Fault:
    """The real server answers, but the connection is closed after that many bytes."""
    return lambda exchange: exchange.relay(response_limit=response_bytes)


def slow_first_byte(seconds: float) -> Fault:
    """The real server answers, ``seconds`` late."""
    return lambda exchange: exchange.relay(first_byte_delay=seconds)


def reset() -> Fault:
    """The connection is reset (TCP RST) once the request head has arrived."""

    def fault(exchange: Exchange) -> None:
        exchange.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    return fault


def respond(
    status_line: str,
    body: bytes = b"",
    content_type: str = "text/plain",
    headers: Mapping[str, str] | None = None,
    *,
    length: bool = True,
) -> Fault:
    """A canned answer instead of the real server's; without ``length`` the body ends
    when the connection closes (as Orthanc's WADO-RS answers do)."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    size = f"Content-Length: {len(body)}\r\n" if length else ""
    response = (
        f"HTTP/1.1 {status_line}\r\nContent-Type: {content_type}\r\n{size}{extra}"
        "Connection: close\r\n\r\n"
    ).encode() + body
    return lambda exchange: exchange.answer(response)


class FaultyRelay:
    """A relay in front of a real server on loopback that applies the planned faults
    to the next connections, one fault per connection, then relays faithfully.

        with faulty_relay(orthanc.url) as relay:
            relay.plan(respond("503 Service Unavailable"), cut_after(300_000))
            ...  # the first request gets a 503, the second a cut connection
    """

    def __init__(self, target_url: str) -> None:
        self.target_port = int(target_url.rsplit(":", 1)[1].split("/", 1)[0])
        self.url = ""
        self.connections = 0
        self._planned: list[Fault] = []
        self._lock = threading.Lock()

    def plan(self, *faults: Fault) -> None:
        with self._lock:
            self._planned.extend(faults)

    def pending(self) -> int:
        """Planned faults not yet applied."""
        with self._lock:
            return len(self._planned)

    def clear(self) -> None:
        with self._lock:
            self._planned.clear()

    def handle(self, connection: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            fault = self._planned.pop(0) if self._planned else relay()
        with connection:
            connection.settimeout(30)
            try:
                head, rest = _read_head(connection)
                fault(Exchange(connection, _close_after_response(head), rest, self.target_port))
            except OSError:
                return


@contextmanager
def faulty_relay(target_url: str) -> Iterator[FaultyRelay]:
    """A FaultyRelay on a free loopback port; ``relay.url`` is its base URL."""
    relay_server = FaultyRelay(target_url)
    with listening(relay_server.handle) as url:
        relay_server.url = url
        yield relay_server
