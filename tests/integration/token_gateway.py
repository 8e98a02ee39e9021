"""A token-protected PACS for the tests: a small verifying reverse proxy in front of a
real Orthanc, checking the bearer tokens of a TokenServer (RS256, PyJWT), served from a
thread of the test process.

How it answers (contract 7.4 fixes the 401 / 403 split; the rest is our choice, in the
spirit of RFC 6750 section 3):

- no ``Authorization: Bearer`` credentials at all (header missing, or another scheme such
  as Basic) -> 401 with ``WWW-Authenticate: Bearer realm="pacs"``;
- an expired access token (its ``exp`` passed, or ``TokenServer.expire_access_tokens``)
  -> 401 with ``WWW-Authenticate: Bearer error="invalid_token"``;
- anything else that is not a valid access token of that server (bad signature, garbage,
  a refresh or auth token, an ``aud`` that matches neither the request's ``Origin`` nor
  the gateway's ``audience``) -> 403;
- while ``reject_next(n, status)`` is armed: that status, whatever the token (e.g. a
  PACS that keeps answering 401 although the token was just refreshed);
- a valid user or OAuth 2.0 client-credentials access token, or one of the configured
  ``static_tokens`` (for ``authType: "bearer"``) -> the request goes to Orthanc without
  the Authorization header, and Orthanc's answer streams back unbuffered.

Every rejection body is ``{"message": ...}``.

    with start_token_gateway(orthanc.url, token_server) as pacs:
        servers = {new_uid(): pacs.server_entry("token")}
        ...
        assert pacs.status_counts[401] == 1 and pacs.outcomes["expired"] == 1
"""

from __future__ import annotations

import hmac
import threading
from collections import Counter
from collections.abc import AsyncIterator, Collection, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import httpx
import jwt
from harness import TlsCert
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from threaded_server import ThreadedServer
from token_server import TokenServer

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]
# Hop-by-hop headers (RFC 9110 7.6.1) stay on their side; so do Host and the token.
NOT_FORWARDED = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
}
NOT_FORWARDED_UP = NOT_FORWARDED | {b"host", b"authorization", b"content-length"}
UPSTREAM_TIMEOUT = httpx.Timeout(60.0, connect=5.0)


class Rejected(Exception):
    def __init__(self, status: int, outcome: str, message: str, challenge: str) -> None:
        super().__init__(message)
        self.status, self.outcome, self.message, self.challenge = (
            status,
            outcome,
            message,
            challenge,
        )


class Gateway:
    """The verifying reverse proxy; see the module docstring."""

    def __init__(
        self,
        orthanc_url: str,
        token_server: TokenServer,
        *,
        static_tokens: Collection[str] = (),
        audience: str | None = None,
        tls: TlsCert | None = None,
    ) -> None:
        self.orthanc_url = orthanc_url.rstrip("/")
        self.token_server = token_server
        self.static_tokens = tuple(static_tokens)
        self.audience = audience
        self._lock = threading.Lock()
        self._status_counts: Counter[int] = Counter()
        self._outcomes: Counter[str] = Counter()
        self._seen_tokens: Counter[str] = Counter()
        self._requests: list[tuple[str, str, int]] = []
        self._request_ids: list[str | None] = []
        self._traceparents: list[str | None] = []
        self._rejections = (0, 0)  # (count, status) still to answer
        self._client: httpx.AsyncClient | None = None
        app = Starlette(
            routes=[Route("/{path:path}", self._handle, methods=METHODS)],
            lifespan=self._lifespan,
        )
        self._http = ThreadedServer(app, "token gateway", tls=tls)

    @property
    def url(self) -> str:
        return self._http.url

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root to put into servers.json as ``uri``."""
        return f"{self.url}/dicom-web"

    @property
    def status_url(self) -> str:
        """A ``statusUri`` that answers 200 with a valid token."""
        return f"{self.dicomweb_url}/studies"

    @property
    def status_counts(self) -> Counter[int]:
        """HTTP statuses answered so far (Orthanc's own ones included)."""
        with self._lock:
            return self._status_counts.copy()

    @property
    def outcomes(self) -> Counter[str]:
        """Token checks so far: "accepted", "missing", "expired", "invalid"."""
        with self._lock:
            return self._outcomes.copy()

    @property
    def seen_tokens(self) -> Counter[str]:
        """Bearer tokens presented so far, valid or not, with how often each came."""
        with self._lock:
            return self._seen_tokens.copy()

    @property
    def requests(self) -> list[tuple[str, str, int]]:
        """Every request so far as (method, path, status answered)."""
        with self._lock:
            return list(self._requests)

    @property
    def request_ids(self) -> list[str | None]:
        """The X-Request-ID header of every request so far (None where it had none)."""
        with self._lock:
            return list(self._request_ids)

    @property
    def traceparents(self) -> list[str | None]:
        """The W3C traceparent header of every request so far (None where it had none)."""
        with self._lock:
            return list(self._traceparents)

    def reset_counters(self) -> None:
        with self._lock:
            self._request_ids.clear()
            self._traceparents.clear()
            self._status_counts.clear()
            self._outcomes.clear()
            self._seen_tokens.clear()
            self._requests.clear()

    def reject_next(self, n: int, status: int = 401) -> None:
        """Answer the next ``n`` requests with ``status`` whatever their token (outcome
        "rejected"); 0 disarms it."""
        with self._lock:
            self._rejections = (n, status)

    def server_entry(self, auth_type: str, **fields: Any) -> dict[str, Any]:
        """A servers.json entry for this PACS. ``token`` gets a fresh auth token,
        ``zhivaAuth`` the token server's first user; ``fields`` override."""
        tokens = self.token_server
        entry: dict[str, Any] = {
            "uri": self.dicomweb_url,
            "isDefault": True,
            "statusUri": self.status_url,
            "authType": auth_type,
        }
        if auth_type in ("token", "zhivaAuth"):
            entry.update(signInTokenServer=tokens.exchange_url, refreshServer=tokens.refresh_url)
        if auth_type == "token":
            entry["authToken"] = tokens.issue_auth_token()
        if auth_type == "zhivaAuth":
            login, password = next(iter(tokens.users.items()))
            entry.update(signInServer=tokens.sign_in_url, login=login, password=password)
        entry.update(fields)
        return entry

    def start(self) -> None:
        self._http.start()

    def stop(self) -> None:
        self._http.stop()

    close = stop

    # --- HTTP ------------------------------------------------------------------------

    @asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=20)
        async with httpx.AsyncClient(
            timeout=UPSTREAM_TIMEOUT, limits=limits, trust_env=False
        ) as client:
            self._client = client
            yield
            self._client = None

    def _record(self, request: Request, status: int, outcome: str) -> None:
        with self._lock:
            self._status_counts[status] += 1
            self._outcomes[outcome] += 1
            self._requests.append((request.method, request.url.path, status))
            self._request_ids.append(request.headers.get("x-request-id"))
            self._traceparents.append(request.headers.get("traceparent"))

    def _authorize(self, request: Request) -> None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        invalid = 'Bearer realm="pacs", error="invalid_token"'
        if scheme.lower() != "bearer" or not token:
            raise Rejected(401, "missing", "bearer token required", 'Bearer realm="pacs"')
        with self._lock:
            self._seen_tokens[token] += 1
            count, status = self._rejections
            if count > 0:
                self._rejections = (count - 1, status)
        if count > 0:
            raise Rejected(status, "rejected", f"rejected ({status}) on purpose", invalid)
        if any(hmac.compare_digest(token.encode(), known.encode()) for known in self.static_tokens):
            return
        try:
            claims = self.token_server.verify_access(token)
        except jwt.ExpiredSignatureError as exc:
            raise Rejected(401, "expired", "access token expired", invalid) from exc
        except jwt.InvalidTokenError as exc:
            raise Rejected(403, "invalid", f"invalid access token: {exc}", invalid) from exc
        if "aud" in claims:
            audiences = {claims["aud"]} if isinstance(claims["aud"], str) else set(claims["aud"])
            allowed = {request.headers.get("origin"), self.audience} - {None}
            if not audiences & allowed:
                raise Rejected(403, "invalid", "token audience does not match", invalid)

    async def _handle(self, request: Request) -> Response:
        try:
            self._authorize(request)
        except Rejected as rejected:
            self._record(request, rejected.status, rejected.outcome)
            return JSONResponse(
                {"message": rejected.message},
                status_code=rejected.status,
                headers={"WWW-Authenticate": rejected.challenge},
            )
        assert self._client is not None, "the lifespan creates the client"
        query = request.scope.get("query_string", b"").decode("latin-1")
        path = request.scope.get("raw_path") or request.url.path.encode()
        url = self.orthanc_url + path.decode("latin-1") + (f"?{query}" if query else "")
        has_body = "content-length" in request.headers or "transfer-encoding" in request.headers
        upstream_request = self._client.build_request(
            request.method,
            url,
            headers=[(k, v) for k, v in request.headers.raw if k not in NOT_FORWARDED_UP],
            content=request.stream() if has_body else None,
        )
        try:
            upstream = await self._client.send(upstream_request, stream=True)
        except httpx.HTTPError as exc:
            self._record(request, 502, "accepted")
            return JSONResponse({"message": f"gateway: Orthanc failed: {exc!r}"}, 502)
        self._record(request, upstream.status_code, "accepted")
        response = StreamingResponse(
            _relay(upstream), upstream.status_code, background=BackgroundTask(upstream.aclose)
        )
        response.raw_headers = [
            (k, v) for k, v in upstream.headers.raw if k.lower() not in NOT_FORWARDED
        ]
        return response


async def _relay(upstream: httpx.Response) -> AsyncIterator[bytes]:
    # Raw bytes: Orthanc's Content-Encoding and Content-Length pass through unchanged.
    try:
        async for chunk in upstream.aiter_raw():
            yield chunk
    finally:
        await upstream.aclose()


@contextmanager
def start_token_gateway(
    orthanc_url: str,
    token_server: TokenServer,
    *,
    static_tokens: Collection[str] = (),
    audience: str | None = None,
    tls: TlsCert | None = None,
) -> Iterator[Gateway]:
    """A running Gateway in front of Orthanc's base URL (``OrthancServer.url``, not its
    DICOMweb root), stopped on exit. ``static_tokens``: bearer tokens accepted as they
    are; ``audience``: an ``aud`` accepted besides the request's Origin; ``tls``: serve
    HTTPS with that certificate."""
    gateway = Gateway(
        orthanc_url, token_server, static_tokens=static_tokens, audience=audience, tls=tls
    )
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()
