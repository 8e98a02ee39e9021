"""Size limits on the request head, enforced while uvicorn parses it.

uvicorn's httptools protocol keeps appending URL and header bytes for as long as a
client sends them, and the app only sees the request once the head is complete: a
limit checked in the app would come after the memory is spent. This protocol counts
the bytes in the parser's callbacks, stops keeping them past a limit and answers in
the proxy's error shape:

- a URL (path and query) longer than ``MAX_URL_BYTES``: ``414 uri_too_long``;
- a header line longer than ``MAX_HEADER_LINE_BYTES``, more than ``MAX_HEADER_COUNT``
  headers or more than ``MAX_HEADERS_BYTES`` of them: ``431 headers_too_large``;
- bytes that are not HTTP at all: ``400 invalid_http`` (uvicorn's own answer is plain
  text).

It also holds each connection to the deadline for its request head and to the cap on
open connections of a ``ConnectionGuard`` (web/connection_guard.py): ``guarded_protocol``
makes the class with the guard of one server.

It plugs in through uvicorn's documented ``http=`` option (a protocol class).
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from model_proxy.errors import ErrorCode
from model_proxy.web.connection_guard import ConnectionGuard

logger = logging.getLogger(__name__)

KiB = 1024
# The usual limits of front proxies (nginx's 8 KiB header buffers, Apache's 8190 bytes
# per line and 100 fields); a viewer's request is a few hundred bytes.
MAX_URL_BYTES = 8 * KiB
MAX_HEADER_LINE_BYTES = 8 * KiB
MAX_HEADER_COUNT = 100
MAX_HEADERS_BYTES = 32 * KiB

# How long at most a refused connection keeps reading (and dropping) what the client
# still sends: closing with unread input makes the kernel reset the connection, and
# the client may then lose the answer it has not read yet. The answer ends our side
# (write_eof), so a client closes as soon as it has read it and the connection goes
# then; this bound is for one that never does. At 1 s, a test client on a 2-core
# machine with both cores busy read its 414 too late and lost it to the reset.
LINGER_SECONDS = 10.0

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


def guarded_protocol(guard: ConnectionGuard) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for one server, with its guard (uvicorn wants a class)."""
    return type("GuardedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"guard": guard})


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the request-head limits above."""

    # The default: the head deadline, no cap (guarded_protocol gives a server its own).
    guard: ClassVar[ConnectionGuard] = ConnectionGuard()

    _url_bytes = 0
    _header_bytes = 0
    _header_count = 0
    _refused = False
    _head_timer: asyncio.TimerHandle | None = None
    _head_started = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.guard.admit(self):
            transport.abort()
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self.guard.release(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the answer is sent; drop the rest of the request (see LINGER_SECONDS)
        if self._head_timer is None and self._between_requests():
            # The first bytes of the next request on a kept-alive connection (uvicorn's
            # keep-alive timer stops at any byte): its head gets the same deadline.
            self._await_head()
        super().data_received(data)

    def on_message_begin(self) -> None:
        self._url_bytes = self._header_bytes = self._header_count = 0
        self._head_started = True
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        if self._refused:
            return
        self._url_bytes += len(url)
        if self._url_bytes > MAX_URL_BYTES:
            self._refuse(
                414,
                ErrorCode.URI_TOO_LONG,
                f"the URL is longer than {MAX_URL_BYTES} bytes; put fewer data-filters in it",
            )
            return
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        line = len(name) + len(value)
        self._header_bytes += line
        self._header_count += 1
        if (
            line > MAX_HEADER_LINE_BYTES
            or self._header_count > MAX_HEADER_COUNT
            or self._header_bytes > MAX_HEADERS_BYTES
        ):
            self._refuse(
                431,
                ErrorCode.HEADERS_TOO_LARGE,
                f"request headers over the limits: {MAX_HEADER_COUNT} headers,"
                f" {MAX_HEADER_LINE_BYTES} bytes each, {MAX_HEADERS_BYTES} bytes in all",
            )
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if not self._refused:
            self._head_started = False
            self._cancel_head_timer()
            self.guard.head_received(self)
            super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._between_requests() and not self.transport.is_closing():
            # Idle on keep-alive: closed first if the connection cap needs room.
            self.guard.awaiting_head(self)

    def shed(self) -> None:
        """The connection cap needs room: close now (abort: a TLS close would wait for
        the client's close_notify, and this client is not answering)."""
        self._cancel_head_timer()
        self.transport.abort()

    def _between_requests(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _await_head(self) -> None:
        self._head_timer = self.loop.call_later(self.guard.head_timeout, self._head_timed_out)
        self.guard.awaiting_head(self)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._between_requests() or self.transport.is_closing():
            return
        self.guard.head_timed_out()
        if self._head_started and not self._refused:
            # Part of a head came: tell a client that is merely slow what happened.
            self._write_error(
                408,
                ErrorCode.REQUEST_HEAD_TIMEOUT,
                f"the request head was not complete within {self.guard.head_timeout:g} s",
            )
        self.shed()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # Called by uvicorn when the parser rejects the bytes (uvicorn logs a warning).
        self._refuse(400, ErrorCode.INVALID_HTTP, "the request is not valid HTTP/1.1")

    def _refuse(self, status: int, code: ErrorCode, message: str) -> None:
        # The parser may still call back for the rest of this chunk; the flag makes
        # those calls no-ops, and the connection closes once this chunk is handled.
        if self._refused:
            return
        self._refused = True
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "unknown client"
        logger.info("refused a request from %s: %d %s", client, status, code)
        self._write_error(status, code, message)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _write_error(self, status: int, code: ErrorCode, message: str) -> None:
        body = orjson.dumps({"message": message, "code": code})
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        for name, value in self.server_state.default_headers:
            head.append(b"%s: %s\r\n" % (name, value))
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        self.transport.write(b"".join(head) + body)
