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

It plugs in through uvicorn's documented ``http=`` option (a protocol class).
"""

from __future__ import annotations

import logging

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from model_proxy.errors import ErrorCode

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
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
}


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the request-head limits above."""

    _url_bytes = 0
    _header_bytes = 0
    _header_count = 0
    _refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the answer is sent; drop the rest of the request (see LINGER_SECONDS)
        super().data_received(data)

    def on_message_begin(self) -> None:
        self._url_bytes = self._header_bytes = self._header_count = 0
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
            super().on_headers_complete()

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
        body = orjson.dumps({"message": message, "code": code})
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])]
        for name, value in self.server_state.default_headers:
            head.append(b"%s: %s\r\n" % (name, value))
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % len(body)
        )
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)
