"""Upstreams that misbehave in ways a real server cannot be made to: they hang, or
answer with a body that is not JSON; and a TLS terminator in front of a real server
(Orthanc 1.10's own HTTPS crashes on Debian's OpenSSL). Each runs in threads of the
test process."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from harness import LOOPBACK


@contextmanager
def _listening(handle: Callable[[socket.socket], None], scheme: str = "http") -> Iterator[str]:
    """Accept loopback connections in a thread, each handled in a thread of its own.
    Yields the base URL; on exit stops accepting and closes the listener."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))
    listener.listen(64)
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
    with _listening(held.append) as url:
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

    with _listening(serve) as url:
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

    with _listening(relay, scheme="https") as url:
        yield url
