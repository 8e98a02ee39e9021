"""The httpx transport of every upstream client: httpcore's pool of our connections.

httpx's own ``AsyncHTTPTransport`` builds httpcore's pool of httpcore's
connections on its default backend (anyio) and takes no other. This transport is
the seam httpx documents for that (``httpx.AsyncBaseTransport``): it owns an
``httpcore.AsyncConnectionPool`` whose public ``create_connection`` hook makes
connection.py's HTTP/1.1 connections on network.py's streams, so the pool's
logic (limits, keep-alive, queueing) stays httpcore's. Requests, responses and
exceptions are mapped exactly as httpx's transport does, so that what
``clients.py`` catches (``httpx.ReadTimeout``, ``httpx.ConnectError``...) is
unchanged.

>>> transport = UpstreamTransport(verify=True, limits=httpx.Limits(max_connections=4))
>>> isinstance(transport, httpx.AsyncBaseTransport)
True
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterator
from contextlib import contextmanager

import httpcore
import httpx

from model_proxy.upstream import tracing
from model_proxy.upstream.connection import HTTP11Connection
from model_proxy.upstream.network import AsyncioBackend
from model_proxy.upstream.request_id import REQUEST_ID_HEADER, current_request_id

__all__ = ["UpstreamTransport"]

# Most specific first: the first match wins (httpcore.ConnectTimeout is also a
# TimeoutException, httpcore.ReadError also a NetworkError).
_EXCEPTIONS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _httpx_exceptions() -> Iterator[None]:
    """Re-raise httpcore's exceptions as httpx's, as httpx's own transport does."""
    try:
        yield
    except Exception as exc:
        for httpcore_type, httpx_type in _EXCEPTIONS:
            if isinstance(exc, httpcore_type):
                raise httpx_type(str(exc)) from exc
        raise


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_exceptions():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class _Pool(httpcore.AsyncConnectionPool):
    """httpcore's pool (limits, keep-alive, queueing) of connection.py's connections.

    ``create_connection`` is httpcore's public hook for a pool of other connections.
    """

    def __init__(self, *, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        super().__init__(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
        )
        ssl_context.set_alpn_protocols(["http/1.1"])  # as httpcore does for HTTP/1.1
        # A name of our own: httpcore's pool keeps private attributes of its own.
        self._new_connection = functools.partial(
            HTTP11Connection,
            ssl_context=ssl_context,
            keepalive_expiry=limits.keepalive_expiry,
            backend=AsyncioBackend(),
        )

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        return self._new_connection(origin)


class UpstreamTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 to one upstream through ``AsyncioBackend`` (network.py).

    ``verify`` is True, False or an ``ssl.SSLContext``; ``limits`` as httpx's.
    """

    def __init__(self, *, verify: bool | ssl.SSLContext, limits: httpx.Limits) -> None:
        ssl_context = (
            verify
            if isinstance(verify, ssl.SSLContext)
            else httpx.create_ssl_context(verify=verify, trust_env=False)
        )
        self._pool = _Pool(ssl_context=ssl_context, limits=limits)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=_with_request_id(request.headers.raw),
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_exceptions():
            response = await self._pool.handle_async_request(core_request)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


_REQUEST_ID_NAME = REQUEST_ID_HEADER.lower().encode()


def _with_request_id(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The request's headers, plus the viewer request's id unless one is set already,
    and the trace context when tracing is on (tracing.py)."""
    request_id = current_request_id.get()
    if request_id is not None and all(name.lower() != _REQUEST_ID_NAME for name, _ in headers):
        headers = [*headers, (REQUEST_ID_HEADER.encode(), request_id.encode())]
    if tracing.enabled():
        headers = [*headers, *tracing.trace_headers()]
    return headers
