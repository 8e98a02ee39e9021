"""Outbound HTTP: client construction and translation of httpx failures.

Foreign exceptions stop here: whatever httpx raises while talking to a PACS or
a model becomes a PacsError/ModelError (502) or an UpstreamTimeout (504) whose
message names the upstream and what failed, and never carries a credential. A
wait for a free pooled connection that times out is the proxy's own congestion,
not the upstream's failure: 503 ``pacs_connections_busy`` (or
``model_connections_busy``) with Retry-After.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from model_proxy.errors import (
    ErrorCode,
    Overloaded,
    PacsError,
    ProxyError,
    UpstreamError,
    UpstreamTimeout,
)
from model_proxy.upstream.transport import UpstreamTransport

# Retry-After when every pooled connection to an upstream is busy: one of the
# retrievals holding them has to finish, and a series takes seconds.
POOL_RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class Timeouts:
    """Seconds. ``idle`` bounds the wait for each read or write, not the whole
    exchange: a 2,000-slice study may legitimately stream for minutes."""

    connect: float = 10.0
    idle: float = 60.0
    # A health probe must not take as long as an inference may: /status waits for all.
    probe: float = 10.0

    def for_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(
            connect=self.connect, read=self.idle, write=self.idle, pool=self.connect
        )

    def for_probe(self) -> httpx.Timeout:
        return httpx.Timeout(self.probe, connect=min(self.connect, self.probe))


def make_client(
    *,
    tls_verify: bool | str,
    timeouts: Timeouts,
    auth: httpx.Auth | None = None,
    max_connections: int = 32,
) -> httpx.AsyncClient:
    """An AsyncClient for one upstream; ``tls_verify`` is a bool or a CA bundle path."""
    verify: bool | ssl.SSLContext
    if isinstance(tls_verify, str):
        verify = ssl.create_default_context(cafile=tls_verify)
    else:
        verify = tls_verify
    # Idle connections go before uvicorn's and Node's 5 s keep-alive timeout closes
    # them: a POST sent on a connection the server is closing fails in transit (the
    # soak test saw it against the example model).
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=8, keepalive_expiry=2.0
    )
    transport = UpstreamTransport(verify=verify, limits=limits)
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeouts.for_httpx(),
        auth=auth,
        follow_redirects=False,
        trust_env=False,  # a hospital's HTTP(S)_PROXY must not capture PACS traffic
    )


@contextmanager
def translate_errors(label: str, error_type: type[UpstreamError]) -> Iterator[None]:
    """Re-raise httpx failures as ``error_type`` or UpstreamTimeout, naming ``label``."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise translated(exc, label, error_type) from exc


def translated(
    exc: httpx.HTTPError, label: str, error_type: type[UpstreamError], *, note: str = ""
) -> ProxyError:
    """The ProxyError for an httpx failure of upstream ``label``; ``note`` ends the message."""
    if isinstance(exc, httpx.PoolTimeout):
        # Every pooled connection to this upstream is busy with other requests: no
        # upstream label, so its circuit breaker does not count it.
        return Overloaded(
            f"model-proxy is busy: every connection to {label} is in use by other"
            f" requests; retry later{note}",
            code=ErrorCode.PACS_CONNECTIONS_BUSY
            if issubclass(error_type, PacsError)
            else ErrorCode.MODEL_CONNECTIONS_BUSY,
            retry_after=POOL_RETRY_AFTER_SECONDS,
        )
    if isinstance(exc, httpx.TimeoutException):
        phase = {
            httpx.ConnectTimeout: "connecting",
            httpx.ReadTimeout: "waiting for data",
            httpx.WriteTimeout: "sending data",
        }.get(type(exc), "waiting")
        return UpstreamTimeout(f"{label}: timed out while {phase}{note}", upstream=label)
    if isinstance(exc, httpx.ConnectError):
        what = f"unreachable ({describe_connect_error(exc)})"
    elif isinstance(exc, httpx.RemoteProtocolError):
        what = f"broke the HTTP exchange ({exc})"
    elif isinstance(exc, httpx.ReadError | httpx.WriteError):
        what = f"broke the connection ({exc or type(exc).__name__})"
    else:
        what = f"{type(exc).__name__} ({exc})"
    return error_type(f"{label}: {what}{note}", upstream=label)


def is_transient(exc: httpx.HTTPError) -> bool:
    """Whether another attempt might succeed: a timeout or a broken connection,
    not a refused certificate or a malformed URL, nor a wait for a pooled
    connection (another one would wait behind the same busy connections)."""
    if isinstance(exc, httpx.PoolTimeout):
        return False
    if not isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        return False
    return "CERTIFICATE_VERIFY_FAILED" not in str(exc)


def describe_connect_error(exc: httpx.ConnectError) -> str:
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return (
            "TLS certificate verification failed; give the server's CA bundle in"
            ' "tlsVerify", or set "tlsVerify": false for a self-signed certificate'
        )
    return text or type(exc).__name__
