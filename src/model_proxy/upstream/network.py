"""The network layer under every outbound httpx client: a lean asyncio protocol.

httpx reads and writes through httpcore, which uses a *network backend* for its
sockets; upstream/connection.py's connections (in the pool transport.py owns)
connect through this one, httpcore's public ``AsyncNetworkBackend`` interface.
On the streaming benchmark (a 158 MB series in, 631 MB of wire format out) the
proxy's event loop was the bottleneck, and the default backend (anyio) cost
about 15 us of Python per read (a cancel scope, an exception map, a queue hop)
and handed over one transport delivery per read: about 14,000 reads of 11 kB for
one series. ``AsyncioStream.read`` returns everything received so far, up to
``READ_BYTES`` (1 MiB, more than the 64 KiB httpcore asks for: h11 takes input
of any size), without copying a single delivery (docs/performance.md, "The
network layer").

The reading side pauses its transport beyond ``_PAUSE_BYTES`` (2 MiB) of unread
data, which bounds what a connection holds in user space. Large body chunks go
out through ``AsyncioStream.write_pieces`` without being joined. Nothing here
touches httpx's, httpcore's or h11's own classes.
"""

# The `timeout` parameters are httpcore's interface (AsyncNetworkStream/Backend).
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import errno
import select
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore

__all__ = ["READ_BYTES", "AsyncioBackend", "AsyncioStream"]

READ_BYTES = 1 << 20
_PAUSE_BYTES = 2 * READ_BYTES


class _Protocol(asyncio.Protocol):
    """Received data as the transport delivered it, end of stream, write flow control."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.eof = False
        self.error: Exception | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio's

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        _wake(self._data_waiter)
        if self.buffered > _PAUSE_BYTES and not self._reading_paused and self.transport:
            self.transport.pause_reading()
            self._reading_paused = True

    def eof_received(self) -> bool:
        self.eof = True
        _wake(self._data_waiter)
        # Close our side too (False): an HTTP server that closes has answered, and
        # what it sent stays readable in ``chunks``. Kept open, as asyncio's and
        # anyio's streams keep it, an idle pooled connection whose server timed it
        # out would sit in CLOSE_WAIT until httpcore next looked at it.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        self._writing_paused = False
        _wake(self._data_waiter)
        _wake(self._drain_waiter)

    @property
    def writing_paused(self) -> bool:
        return self._writing_paused

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        _wake(self._drain_waiter)

    # for AsyncioStream

    def take(self, most: int) -> bytes:
        """Up to ``most`` received bytes; a single delivery is handed over uncopied."""
        chunks = self.chunks
        if len(chunks) == 1 or len(chunks[0]) >= most:
            data = chunks.popleft()
            if len(data) > most:
                chunks.appendleft(data[most:])
                data = data[:most]
        else:
            pieces = [chunks.popleft()]
            size = len(pieces[0])
            while chunks and size + len(chunks[0]) <= most:
                size += len(chunks[0])
                pieces.append(chunks.popleft())
            data = b"".join(pieces)
        self.buffered -= len(data)
        if self._reading_paused and self.buffered <= _PAUSE_BYTES // 2:
            self._reading_paused = False
            # uvloop raises on a closed transport where asyncio does nothing.
            if self.transport is not None and not self.transport.is_closing():
                self.transport.resume_reading()
        return data

    async def wait_for_data(self) -> None:
        self._data_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._data_waiter
        finally:
            self._data_waiter = None

    async def drain(self) -> None:
        while self._writing_paused:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self.error is not None:
            raise self.error
        if self.transport is None or self.transport.is_closing():
            raise ConnectionResetError(errno.ECONNRESET, "the connection is closed")


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection, as httpcore uses it."""

    def __init__(self, protocol: _Protocol) -> None:
        self._protocol = protocol

    @property
    def _transport(self) -> asyncio.Transport:
        assert self._protocol.transport is not None
        return self._protocol.transport

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Everything received so far, up to READ_BYTES; waits for some if there is none."""
        protocol = self._protocol
        if not protocol.chunks:
            # Only a read that waits needs its timeout: a timer per read, set and
            # cancelled, was a tenth of the event loop's time on the benchmark.
            try:
                async with asyncio.timeout(timeout):
                    while not protocol.chunks:
                        if protocol.error is not None:
                            raise protocol.error
                        if protocol.eof:
                            return b""
                        await protocol.wait_for_data()
            except TimeoutError as exc:
                raise httpcore.ReadTimeout("timed out reading from the connection") from exc
            except OSError as exc:
                raise httpcore.ReadError(_reason(exc)) from exc
        return protocol.take(max(max_bytes, READ_BYTES))

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if buffer:
            await self._written(lambda: self._transport.write(buffer), timeout)

    async def write_pieces(self, pieces: Iterable[bytes], timeout: float | None = None) -> None:
        """Write ``pieces`` without joining them; return once the kernel has them all.

        Large body chunks come here (upstream/connection.py); they may be views of buffers
        their owner reuses as soon as this returns (``models/slice_buffers.py``),
        so nothing of them may stay queued in the transport.
        """

        limited = False

        def send() -> None:
            nonlocal limited
            self._transport.writelines(pieces)
            if self._transport.get_write_buffer_size():
                self._transport.set_write_buffer_limits(high=0)  # drain to empty
                limited = True

        try:
            await self._written(send, timeout)
        finally:
            if limited and not self._transport.is_closing():
                self._transport.set_write_buffer_limits()

    async def _written(self, send: Callable[[], None], timeout: float | None) -> None:
        protocol = self._protocol
        try:
            self._check_open()
            try:
                send()
            except RuntimeError:  # uvloop, on a transport closed under us
                self._check_open()
                raise
            if protocol.writing_paused:
                # As for reads, only a write that waits for the peer gets a timer.
                async with asyncio.timeout(timeout):
                    await protocol.drain()
            else:
                await protocol.drain()  # raises what the connection met; does not wait
        except TimeoutError as exc:
            raise httpcore.WriteTimeout("timed out writing to the connection") from exc
        except OSError as exc:
            raise httpcore.WriteError(_reason(exc)) from exc

    def _check_open(self) -> None:
        if self._protocol.error is not None:
            raise self._protocol.error
        if self._transport.is_closing():
            raise ConnectionResetError(errno.ECONNRESET, "the connection is closed")

    @property
    def plain(self) -> bool:
        """Not TLS: what is written goes to the socket as it is."""
        return self._transport.get_extra_info("sslcontext") is None

    def abort(self) -> None:
        """Close at once, dropping what is queued: for a connection left mid-exchange."""
        self._transport.abort()

    async def aclose(self) -> None:
        # As anyio does: close, let the loop run once, then drop whatever is still
        # queued, so that closing a connection to a stalled peer cannot hang.
        transport = self._transport
        transport.close()
        await asyncio.sleep(0)
        transport.abort()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                tls = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            await self.aclose()
            raise httpcore.ConnectTimeout("timed out in the TLS handshake") from exc
        except (OSError, ssl.SSLError) as exc:
            await self.aclose()
            raise httpcore.ConnectError(_reason(exc)) from exc
        if tls is None:  # the connection was closed during the handshake
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self._protocol.transport = tls
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # httpcore asks before reusing an idle connection: readable then means
            # the server closed it (or sent something it should not have).
            protocol = self._protocol
            return (
                protocol.eof
                or bool(protocol.chunks)
                or _socket_readable(self._transport.get_extra_info("socket"))
            )
        names = {"client_addr": "sockname", "server_addr": "peername"}
        if info in ("ssl_object", "socket", *names):
            return self._transport.get_extra_info(names.get(info, info))
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        stream = await _connect(
            lambda: loop.create_connection(_Protocol, host, port, local_addr=local), timeout
        )
        sock = stream.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for option in socket_options or ():
            sock.setsockopt(*option)
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        stream = await _connect(lambda: loop.create_unix_connection(_Protocol, path), timeout)
        for option in socket_options or ():
            stream.get_extra_info("socket").setsockopt(*option)
        return stream

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connect(
    opening: Callable[[], Awaitable[tuple[asyncio.BaseTransport, _Protocol]]],
    timeout: float | None,
) -> AsyncioStream:
    try:
        async with asyncio.timeout(timeout):
            _, protocol = await opening()
    except TimeoutError as exc:
        raise httpcore.ConnectTimeout("timed out connecting") from exc
    except OSError as exc:
        raise httpcore.ConnectError(_reason(exc)) from exc
    return AsyncioStream(protocol)


def _reason(exc: BaseException) -> str:
    """What went wrong, for the messages users read ("Connection refused")."""
    strerror = getattr(exc, "strerror", None)
    return str(strerror or exc or type(exc).__name__)


def _socket_readable(sock: socket.socket | None) -> bool:
    """Whether ``sock`` has data or an end of stream waiting, without blocking.

    ``poll`` rather than ``select``, which refuses descriptors from 1024 on: a
    proxy with many open files would see every idle connection as closed.
    """
    if sock is None:
        return True
    try:
        fd = sock.fileno()
        if fd < 0:
            return True  # closed under us
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True
