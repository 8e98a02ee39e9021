"""The server's TLS context: AEAD-only TLS 1.2 suites, and a plain HTTP request on the
TLS port answered with a line that says to use https (docs/security.md).

OpenSSL recognises a plain HTTP request in place of a ClientHello (the handshake fails
with reason ``HTTP_REQUEST``), but asyncio and uvloop drop a failed handshake without
telling the application. The context's ``sslobject_class`` (a public hook of ``ssl``)
sees the failure first: it writes a plain-text HTTP answer into the connection's
outgoing buffer and reports "want read", on which the event loop's TLS layer sends
what is in that buffer; the next read ends the connection as the failure would have.
"""

from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path
from typing import Any

import orjson

from model_proxy.errors import ErrorCode

logger = logging.getLogger(__name__)

# TLS 1.2 with forward secrecy and AEAD only: no CBC suites (Lucky13-style padding
# oracles), no RSA key exchange. TLS 1.3 suites are all AEAD and not set here.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!SHA1"
# One log line per this many seconds at most: a scanner must not flood the log.
LOG_INTERVAL = 60.0


def plain_http_answer(port: int) -> bytes:
    body = orjson.dumps(
        {
            "message": f"this port speaks HTTPS only: use https://<host>:{port}/",
            "code": ErrorCode.HTTPS_REQUIRED,
        }
    )
    head = (
        "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class _PlainHttpNotice:
    """The answer to send and the rate limit of the log line, shared by connections."""

    def __init__(self, port: int) -> None:
        self.answer = plain_http_answer(port)
        self.port = port
        self._logged_at: float | None = None
        self._unlogged = 0

    def log(self) -> None:
        now = time.monotonic()
        if self._logged_at is not None and now - self._logged_at < LOG_INTERVAL:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last line)" if self._unlogged else ""
        logger.warning(
            "plain HTTP request on the TLS port %d: answered 400 %s; clients must use https://%s",
            self.port,
            ErrorCode.HTTPS_REQUIRED,
            more,
        )
        self._logged_at, self._unlogged = now, 0


class _ServerContext(ssl.SSLContext):
    notice: _PlainHttpNotice

    def wrap_bio(
        self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO, *args: Any, **kwargs: Any
    ) -> ssl.SSLObject:
        wrapped = super().wrap_bio(incoming, outgoing, *args, **kwargs)
        if isinstance(wrapped, _PlainHttpAwareObject):
            wrapped.outgoing_bio = outgoing
            wrapped.notice = self.notice
        return wrapped


class _PlainHttpAwareObject(ssl.SSLObject):
    outgoing_bio: ssl.MemoryBIO | None = None
    notice: _PlainHttpNotice | None = None
    answered = False

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except ssl.SSLError as exc:
            if exc.reason != "HTTP_REQUEST" or self.answered or self.outgoing_bio is None:
                raise
            assert self.notice is not None
            self.answered = True
            self.notice.log()
            self.outgoing_bio.write(self.notice.answer)
            raise ssl.SSLWantReadError("plain HTTP answered; waiting for the close") from None


def server_context(cert: Path, key: Path, port: int) -> ssl.SSLContext:
    """The listening socket's TLS context for ``cert`` / ``key`` (PEM)."""
    context = _ServerContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    context.set_ciphers(TLS12_CIPHERS)
    context.set_alpn_protocols(["http/1.1"])
    context.notice = _PlainHttpNotice(port)
    context.sslobject_class = _PlainHttpAwareObject
    return context
