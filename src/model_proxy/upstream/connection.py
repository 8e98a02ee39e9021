"""One HTTP/1.1 connection, for httpcore's connection pool, without copies of bodies.

httpcore's own HTTP/1.1 connection hands every body chunk to h11, which joins
it with its chunk header into a new bytes object, and reads response bodies
through h11's receive buffer, which slices each read twice and then copies it
to bytes. On the benchmark's series (631 MB out, 158 MB in) that was about a
fifth of the proxy's CPU time (docs/performance.md). This connection uses h11
for what it is good at, the request's framing and the response's head; a body
chunk of ``PASSTHROUGH_BYTES`` or more goes to the socket as h11's pieces
(``send_with_data_passthrough``, not joined), a smaller one with the next chunk,
and the response body is read here: reads are handed on as they come for a
Content-Length body, and sliced at most once for a chunked one.

The pool (upstream/transport.py) creates these through its public
``create_connection``; the pool's logic (limits, keep-alive, queueing) stays
httpcore's. Each exchange has an h11 connection of its own, so the body read
here leaves no h11 state behind.
"""

# The `timeout` parameters are httpcore's per-phase timeouts, passed down to the stream.
# ruff: noqa: ASYNC109

from __future__ import annotations

import enum
import re
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import contextmanager

import h11
import httpcore

from model_proxy.upstream.network import READ_BYTES, AsyncioBackend, AsyncioStream

__all__ = ["PASSTHROUGH_BYTES", "HTTP11Connection"]

# Smaller chunks (JSON literals, multipart headers) are not worth a second write call.
PASSTHROUGH_BYTES = 64 * 1024
_HEAD_BYTES = 100 * 1024  # as httpcore: the largest response head accepted
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]+")
_LINE_BYTES = 64 * 1024  # a chunk-size line or a trailer field


class _State(enum.Enum):
    NEW = enum.auto()
    ACTIVE = enum.auto()
    IDLE = enum.auto()
    CLOSED = enum.auto()


class HTTP11Connection(httpcore.AsyncConnectionInterface):
    def __init__(
        self,
        origin: httpcore.Origin,
        *,
        ssl_context: ssl.SSLContext,
        keepalive_expiry: float | None,
        backend: AsyncioBackend,
    ) -> None:
        self._origin = origin
        self._ssl_context = ssl_context
        self._keepalive_expiry = keepalive_expiry
        self._backend = backend
        self._stream: AsyncioStream | None = None
        self._state = _State.NEW
        self._expire_at: float | None = None
        self._requests = 0

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        if not self.can_handle_request(request.url.origin):
            raise RuntimeError(
                f"a request for {request.url.origin} on a connection to {self._origin}"
            )
        if self._state not in (_State.NEW, _State.IDLE):
            raise httpcore.ConnectionNotAvailable()
        self._state = _State.ACTIVE
        self._requests += 1
        self._expire_at = None
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        try:
            stream = self._stream or await self._connect(request, timeouts.get("connect"))
            self._stream = stream
            exchange = h11.Connection(h11.CLIENT, max_incomplete_event_size=_HEAD_BYTES)
            sent_all = await _send_request(exchange, stream, request, timeouts.get("write"))
            head, leftover = await _receive_head(exchange, stream, timeouts.get("read"))
        except BaseException:
            self._close_now()
            raise
        keep_alive = sent_all and _keep_alive(request, head)
        body = _Body(self, stream, leftover, _framing(request, head), keep_alive, timeouts)
        return httpcore.Response(
            status=head.status_code,
            headers=head.headers.raw_items(),
            content=body,
            extensions={
                "http_version": b"HTTP/" + head.http_version,
                "reason_phrase": head.reason,
                "network_stream": stream,
            },
        )

    async def _connect(self, request: httpcore.Request, timeout: float | None) -> AsyncioStream:
        host = self._origin.host.decode("ascii")
        stream = await self._backend.connect_tcp(host, self._origin.port, timeout=timeout)
        if self._origin.scheme == b"https":
            sni = request.extensions.get("sni_hostname") or host
            stream = await stream.start_tls(self._ssl_context, server_hostname=sni, timeout=timeout)
        assert isinstance(stream, AsyncioStream)
        return stream

    async def _finished(self, reusable: bool) -> None:
        """The response body was read to its end (or given up, ``reusable`` False)."""
        if reusable and self._state is _State.ACTIVE:
            self._state = _State.IDLE
            if self._keepalive_expiry is not None:
                self._expire_at = time.monotonic() + self._keepalive_expiry
        else:
            # Closed as httpcore's connection closes it: through the stream's aclose,
            # which lets the loop run (other tasks see what was read before this end).
            await self.aclose()

    def _close_now(self) -> None:
        self._state = _State.CLOSED
        if self._stream is not None:
            self._stream.abort()

    # httpcore.AsyncConnectionInterface, as the pool asks

    async def aclose(self) -> None:
        self._state = _State.CLOSED
        if self._stream is not None:
            await self._stream.aclose()

    def can_handle_request(self, origin: httpcore.Origin) -> bool:
        return origin == self._origin

    def is_available(self) -> bool:
        return self._state is _State.IDLE

    def has_expired(self) -> bool:
        if self._state is not _State.IDLE:
            return False
        if self._expire_at is not None and time.monotonic() > self._expire_at:
            return True
        # Readable while idle: the server closed it (or sent what it should not have).
        assert self._stream is not None
        return bool(self._stream.get_extra_info("is_readable"))

    def is_idle(self) -> bool:
        return self._state is _State.IDLE

    def is_closed(self) -> bool:
        return self._state is _State.CLOSED

    def info(self) -> str:
        return (
            f"{str(self._origin)!r}, HTTP/1.1, {self._state.name}, Request Count: {self._requests}"
        )

    def __repr__(self) -> str:
        return f"<HTTP11Connection [{self.info()}]>"


async def _send_request(
    exchange: h11.Connection,
    stream: AsyncioStream,
    request: httpcore.Request,
    timeout: float | None,
) -> bool:
    """Send ``request``; False if the server stopped taking it (it may have answered)."""
    try:
        with _h11_errors():
            head = exchange.send(
                h11.Request(
                    method=request.method, target=request.url.target, headers=request.headers
                )
            )
        await stream.write(head or b"", timeout)
        assert isinstance(request.stream, AsyncIterable)
        # Small chunks (JSON punctuation, a part's headers) are held and go out
        # with the next one: one write, not two, per instance of a model's body.
        # They are copied, as a chunk may be a view of a buffer its producer
        # reuses once the next chunk is asked for (models/pipeline.py).
        held: list[bytes] = []
        held_bytes = 0
        async for chunk in request.stream:
            with _h11_errors():
                pieces = exchange.send_with_data_passthrough(h11.Data(data=chunk))
            if pieces is None:
                continue
            if len(chunk) >= PASSTHROUGH_BYTES and stream.plain:
                await stream.write_pieces([*held, *pieces], timeout)
            elif held_bytes + len(chunk) < PASSTHROUGH_BYTES:
                held += map(bytes, pieces)
                held_bytes += len(chunk)
                continue
            else:
                await stream.write(b"".join([*held, *pieces]), timeout)
            held, held_bytes = [], 0
        with _h11_errors():
            end = exchange.send(h11.EndOfMessage())
        await stream.write(b"".join([*held, end or b""]), timeout)
    except httpcore.WriteError:
        # As httpcore does: a server may close early and still answer (a 413, say).
        return False
    return True


async def _receive_head(
    exchange: h11.Connection, stream: AsyncioStream, timeout: float | None
) -> tuple[h11.Response, bytes]:
    """The response's head, and what was received after it."""
    while True:
        with _h11_errors():
            event = exchange.next_event()
        if event is h11.NEED_DATA:
            data = await stream.read(READ_BYTES, timeout)
            if not data and exchange.their_state is h11.SEND_RESPONSE:
                raise httpcore.RemoteProtocolError(
                    "Server disconnected without sending a response."
                )
            with _h11_errors():
                exchange.receive_data(data)
        elif isinstance(event, h11.Response):
            leftover, _ = exchange.trailing_data
            return event, leftover
        elif not isinstance(event, h11.InformationalResponse):  # 1xx: the answer follows
            raise httpcore.RemoteProtocolError(f"unexpected {type(event).__name__} from the server")


@contextmanager
def _h11_errors() -> Iterator[None]:
    """h11's exceptions as httpcore's, as httpcore's own connection maps them."""
    try:
        yield
    except h11.RemoteProtocolError as exc:
        raise httpcore.RemoteProtocolError(str(exc)) from exc
    except h11.LocalProtocolError as exc:
        raise httpcore.LocalProtocolError(str(exc)) from exc


def _keep_alive(request: httpcore.Request, head: h11.Response) -> bool:
    if head.http_version != b"1.1":
        return False
    for headers in (request.headers, head.headers.raw_items()):
        for name, value in headers:
            if name.lower() == b"connection" and b"close" in value.lower():
                return False
    return True


def _framing(request: httpcore.Request, head: h11.Response) -> int | str:
    """The body's length, "chunked", or "close" (it ends when the server closes)."""
    if request.method == b"HEAD" or head.status_code in (204, 304):
        return 0
    # h11 has checked these: one Content-Length, and no Transfer-Encoding but chunked.
    fields = dict(head.headers)
    if b"transfer-encoding" in fields:
        return "chunked"
    if b"content-length" in fields:
        return int(fields[b"content-length"])
    return "close"


class _Body:
    """The response body as httpcore's Response content; returns the connection to
    the pool once read to its end, closes it if left before."""

    def __init__(
        self,
        connection: HTTP11Connection,
        stream: AsyncioStream,
        leftover: bytes,
        framing: int | str,
        keep_alive: bool,
        timeouts: dict[str, float | None],
    ) -> None:
        self._connection = connection
        self._stream = stream
        # Received and not yet handed on: self._data[self._at:]. An offset, not a
        # slice, so that many small chunks in one read cost no copies of the rest.
        self._data = leftover
        self._at = 0
        self._framing = framing
        self._keep_alive = keep_alive and framing != "close"
        self._timeout = timeouts.get("read")
        self._closed = False
        self._received = len(leftover)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            if self._framing == "chunked":
                parts = self._chunked()
            elif self._framing == "close":
                parts = self._until_closed()
            else:
                assert isinstance(self._framing, int)
                parts = self._sized(self._framing)
            async for part in parts:
                yield part
        except BaseException:
            await self._close(reusable=False)
            raise
        # Anything after the body is something the server should not have sent.
        await self._close(reusable=self._keep_alive and self._at == len(self._data))

    async def aclose(self) -> None:
        # Once read to its end, already done: this does nothing. Left before, the
        # connection is closed, unless there was nothing to read (a HEAD, a 204).
        empty = self._framing == 0 and self._at == len(self._data)
        await self._close(reusable=self._keep_alive and empty)

    async def _close(self, *, reusable: bool) -> None:
        if not self._closed:
            self._closed = True
            await self._connection._finished(reusable)

    async def _take(self, most: int) -> bytes:
        """Up to ``most`` bytes, at least one; a whole read is handed on uncopied."""
        if self._at == len(self._data):
            self._data, self._at = await self._read(), 0
        data, at = self._data, self._at
        if at == 0 and len(data) <= most:
            self._at = len(data)
            return data
        piece = data[at : at + most]
        self._at = at + len(piece)
        return piece

    async def _read(self) -> bytes:
        data = await self._stream.read(READ_BYTES, self._timeout)
        self._received += len(data)
        if not data:
            raise httpcore.RemoteProtocolError(
                "peer closed connection without sending complete message body"
                f" (received {self._received} bytes of {self._framing})"
            )
        return data

    async def _sized(self, length: int) -> AsyncIterator[bytes]:
        while length:
            piece = await self._take(length)
            length -= len(piece)
            yield piece

    async def _until_closed(self) -> AsyncIterator[bytes]:
        if self._at < len(self._data):
            yield self._data[self._at :]
        while data := await self._stream.read(READ_BYTES, self._timeout):
            yield data
        self._data, self._at = b"", 0

    async def _chunked(self) -> AsyncIterator[bytes]:
        """RFC 9112 7.1: size lines, data, CRLF; a 0-size chunk, trailers, an empty line."""
        while size := int(await self._line(size_line=True), 16):
            while size:
                piece = await self._take(size)
                size -= len(piece)
                yield piece
            if await self._line():
                raise httpcore.RemoteProtocolError("chunk data longer than its size")
        while await self._line():  # trailer fields, ignored
            pass

    async def _line(self, *, size_line: bool = False) -> bytes:
        while (end := self._data.find(b"\r\n", self._at)) < 0:
            if len(self._data) - self._at > _LINE_BYTES:
                raise httpcore.RemoteProtocolError("chunked encoding line too long")
            # A line across two reads: rare, and short.
            self._data, self._at = self._data[self._at :] + await self._read(), 0
        line = self._data[self._at : end]
        self._at = end + 2
        if size_line:
            line = line.split(b";", 1)[0].strip(b" \t")  # chunk extensions, ignored
            if not _CHUNK_SIZE.fullmatch(line):
                raise httpcore.RemoteProtocolError(f"invalid chunk size {line[:20]!r}")
        return line
