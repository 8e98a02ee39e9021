"""Upstreams that misbehave in ways a real server cannot be made to: they hang, or
answer with a body that is not JSON; a relay that injects faults (refusals, 5xx, cut
connections, silence) into the exchanges with a real server; and a TLS terminator in
front of a real server (Orthanc 1.10's own HTTPS crashes on Debian's OpenSSL). Each
runs in threads of the test process; the socket plumbing they share is in
relay_sockets.py."""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from harness import LOOPBACK
from relay_sockets import Exchange, listening, port_of, pump


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
    target_port = port_of(target_url)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))

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
        self.target_port = port_of(target_url)
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
                fault(Exchange.accept(connection, self.target_port))
            except OSError:
                return


@contextmanager
def faulty_relay(target_url: str) -> Iterator[FaultyRelay]:
    """A FaultyRelay on a free loopback port; ``relay.url`` is its base URL."""
    relay_server = FaultyRelay(target_url)
    with listening(relay_server.handle) as url:
        relay_server.url = url
        yield relay_server
