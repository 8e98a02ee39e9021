"""Response headers every answer carries, and the one request-head check uvicorn leaves
to the application: a single ``Host`` (docs/security.md).

Pure ASGI (it must not buffer the streamed results): it only edits the
``http.response.start`` message on its way out.
"""

from __future__ import annotations

import orjson
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model_proxy.errors import ErrorCode

# A year, without includeSubDomains: the proxy speaks for its own host name only.
HSTS = "max-age=31536000"
# The status page is self-contained: inline styles, no scripts, no forms, no frames.
HTML_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class SecurityHeadersMiddleware:
    """``X-Content-Type-Options: nosniff`` on every answer, ``Strict-Transport-Security``
    over TLS, a restrictive ``Content-Security-Policy`` on HTML pages; a request with
    more than one ``Host`` header is refused (400 ``invalid_http``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tls = scope.get("scheme") == "https"
        hosts = sum(1 for name, _ in scope["headers"] if name == b"host")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                if tls:
                    headers["Strict-Transport-Security"] = HSTS
                if headers.get("content-type", "").startswith("text/html"):
                    # A page with a script sets its own policy (routes/jobs_page.py).
                    headers.setdefault("Content-Security-Policy", HTML_CSP)
                    headers["X-Frame-Options"] = "DENY"
            await send(message)

        if hosts > 1:
            # Two Hosts may be read differently by a cache or a proxy in front of us.
            await _refuse(send_with_headers, f"the request has {hosts} Host headers; send one")
            return
        await self.app(scope, receive, send_with_headers)


async def _refuse(send: Send, message: str) -> None:
    body = orjson.dumps({"message": message, "code": ErrorCode.INVALID_HTTP})
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
