"""A token server test double that behaves as docs/compatibility.md §7 says, served over
real HTTP on loopback from a thread of the test process (so tests read its counters).

Routes (all POST):

- ``/sign-in`` (signInServer): JSON ``{"username", "password"}`` -> 200
  ``{"token": "<auth token>"}``; bad credentials -> 401 ``{"message"}``; a body that is
  not such JSON -> 400 ``{"message"}``.
- ``/exchange`` (signInTokenServer): ``Authorization: Bearer <auth token>``, no body ->
  200 with the access token in the ``Authorization: Bearer ...`` response header and the
  refresh token as the raw ``text/html`` body. The auth token is single-use: a second
  exchange -> 401 ``{"message"}``.
- ``/refresh`` (refreshServer): ``Authorization: Bearer <refresh token>`` -> 200, a new
  access token in the ``Authorization`` header, empty body; the refresh token is not
  rotated. Expired, revoked or unknown -> 401 ``{"message"}``.
- ``/oauth/token``: OAuth 2.0 client credentials (RFC 6749 4.4; see oauth_request.py)
  -> 200 ``{"access_token", "token_type": "Bearer", "expires_in", "scope"?}``.

Tokens are RS256 JWTs (token_issuer.py). When an exchange or refresh request carries an
``Origin`` header, the tokens get it as ``aud`` (contract 7.5); ``origins`` records them,
so a test can assert the proxy sent none.

Controls: ``issue_auth_token``, ``set_lifetimes``, ``expire_access_tokens``,
``revoke_refresh_tokens``, ``fail_next``, ``set_delay``, ``hold``, ``stop``/``start`` (down, then
back with its state). What happened: ``calls`` (every request), ``successes`` (2xx),
``origins``, ``oauth_grants``.

    with start_token_server(access_lifetime=2.0) as tokens:
        entry = {"authToken": tokens.issue_auth_token(), "signInTokenServer": tokens.exchange_url}
        ...
        assert tokens.successes["exchange"] == 1 and tokens.calls["refresh"] == 1
"""

from __future__ import annotations

import asyncio
import hmac
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import orjson
from harness import TlsCert
from oauth_request import OAuthError, parse_client_credentials
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from threaded_server import ThreadedServer
from token_issuer import TokenIssuer, TokenRejected

ENDPOINTS = ("sign_in", "exchange", "refresh", "oauth_token")
# A held request is answered after this many seconds even if the test never releases it.
HOLD_LIMIT = 120.0
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

Handler = Callable[[Request], Awaitable[Response]]


def _message(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class TokenServer:
    """The double's state and its HTTP server; see the module docstring."""

    def __init__(
        self,
        *,
        access_lifetime: float = 3600.0,
        refresh_lifetime: float = 30 * 86400.0,
        users: Mapping[str, str] | None = None,
        oauth_clients: Mapping[str, str] | None = None,
        oauth_scopes: Collection[str] | None = None,
        tls: TlsCert | None = None,
    ) -> None:
        self.tokens = TokenIssuer(
            access_lifetime=access_lifetime, refresh_lifetime=refresh_lifetime
        )
        self.users = dict(users if users is not None else {"doctor": "s3cret"})
        self.oauth_clients = dict(
            oauth_clients if oauth_clients is not None else {"proxy": "client-secret"}
        )
        self.oauth_scopes = None if oauth_scopes is None else frozenset(oauth_scopes)
        self._lock = threading.Lock()
        self._calls: Counter[str] = Counter()
        self._successes: Counter[str] = Counter()
        self._failures: dict[str | None, tuple[int, int]] = {}  # endpoint -> (count, status)
        self._delays: dict[str | None, float] = {}  # endpoint (None: all) -> seconds
        self._gates: dict[str, threading.Event] = {}  # endpoint -> released when set
        self._origins: list[str] = []
        self._oauth_grants: list[dict[str, str | None]] = []
        routes = [
            Route("/sign-in", self._counted("sign_in", self._sign_in), methods=["POST"]),
            Route("/exchange", self._counted("exchange", self._exchange), methods=["POST"]),
            Route("/refresh", self._counted("refresh", self._refresh), methods=["POST"]),
            Route("/oauth/token", self._counted("oauth_token", self._oauth), methods=["POST"]),
        ]
        self._http = ThreadedServer(Starlette(routes=routes), "token server", tls=tls)

    # --- addresses -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return self._http.url

    @property
    def sign_in_url(self) -> str:
        return f"{self.url}/sign-in"

    @property
    def exchange_url(self) -> str:
        return f"{self.url}/exchange"

    @property
    def refresh_url(self) -> str:
        return f"{self.url}/refresh"

    @property
    def oauth_token_url(self) -> str:
        return f"{self.url}/oauth/token"

    @property
    def public_key_pem(self) -> str:
        return self.tokens.public_key_pem

    # --- what happened (snapshots, safe to read while the server runs) -----------------

    @property
    def calls(self) -> Counter[str]:
        """Requests per endpoint ("sign_in", "exchange", "refresh", "oauth_token"),
        failed ones included."""
        with self._lock:
            return self._calls.copy()

    @property
    def successes(self) -> Counter[str]:
        """Requests per endpoint that were answered 2xx."""
        with self._lock:
            return self._successes.copy()

    @property
    def origins(self) -> list[str]:
        """``Origin`` headers received on any endpoint (the proxy should send none)."""
        with self._lock:
            return list(self._origins)

    @property
    def oauth_grants(self) -> list[dict[str, str | None]]:
        """Accepted client-credentials requests: client_id, scope, audience, client_auth."""
        with self._lock:
            return [dict(grant) for grant in self._oauth_grants]

    def reset_counters(self) -> None:
        with self._lock:
            self._calls.clear()
            self._successes.clear()
            self._origins.clear()
            self._oauth_grants.clear()

    # --- controls --------------------------------------------------------------------

    def issue_auth_token(self, username: str | None = None) -> str:
        """A fresh single-use auth token, as if an administrator created one
        (for the first configured user unless ``username`` is given)."""
        return self.tokens.auth_token(username or next(iter(self.users), "doctor"))

    def verify_access(self, token: str) -> dict[str, Any]:
        """Claims of a valid access token; raises jwt.ExpiredSignatureError when expired,
        jwt.InvalidTokenError when invalid (a refresh or auth token is invalid here)."""
        return self.tokens.verify_access(token)

    def set_lifetimes(self, *, access: float | None = None, refresh: float | None = None) -> None:
        """Lifetimes in seconds of the tokens issued from now on."""
        self.tokens.set_lifetimes(access=access, refresh=refresh)

    def revoke_refresh_tokens(self) -> None:
        """Every refresh token issued so far is rejected from now on."""
        self.tokens.revoke_refresh_tokens()

    def expire_access_tokens(self) -> None:
        """Every access token issued so far counts as expired (PACS answers 401)."""
        self.tokens.expire_access_tokens()

    def fail_next(self, n: int, status: int = 503, *, endpoint: str | None = None) -> None:
        """The next ``n`` requests (to ``endpoint`` only, if given) are answered with
        ``status`` and ``{"message": ...}`` before anything else happens."""
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
        with self._lock:
            self._failures[endpoint] = (n, status)

    def set_delay(self, seconds: float, *, endpoint: str | None = None) -> None:
        """Requests (to ``endpoint`` only, if given) wait this long before they are
        handled, e.g. to let concurrent requests pile up behind one refresh. 0 ends it."""
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
        with self._lock:
            self._delays[endpoint] = seconds

    def hold(self, endpoint: str) -> threading.Event:
        """Requests to ``endpoint`` wait (counted in ``calls``, unanswered) until the
        returned event is set, at most ``HOLD_LIMIT`` seconds: a test sees a call in
        flight and decides when it ends."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
        gate = threading.Event()
        with self._lock:
            self._gates[endpoint] = gate
        return gate

    def start(self) -> None:
        """Start serving (again, on the same port, after ``stop``); state is kept."""
        self._http.start()

    def stop(self) -> None:
        """Stop serving: connections to ``url`` are refused until ``start``."""
        self._http.stop()

    close = stop

    # --- HTTP ------------------------------------------------------------------------

    def _injected_failure(self, endpoint: str) -> int | None:
        with self._lock:
            for key in (endpoint, None):
                count, status = self._failures.get(key, (0, 0))
                if count > 0:
                    self._failures[key] = (count - 1, status)
                    return status
        return None

    def _counted(self, endpoint: str, handler: Handler) -> Handler:
        async def counted(request: Request) -> Response:
            with self._lock:
                self._calls[endpoint] += 1
                if "origin" in request.headers:
                    self._origins.append(request.headers["origin"])
                delay = self._delays.get(endpoint) or self._delays.get(None)
                gate = self._gates.get(endpoint)
            if delay:
                await asyncio.sleep(delay)
            if gate is not None:
                await asyncio.to_thread(gate.wait, HOLD_LIMIT)
            status = self._injected_failure(endpoint)
            if status is not None:
                return _message(status, f"injected failure of {endpoint}")
            response = await handler(request)
            if response.status_code < 300:
                with self._lock:
                    self._successes[endpoint] += 1
            return response

        return counted

    async def _sign_in(self, request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _message(400, "the body must be JSON")
        if not isinstance(body, dict) or not all(
            isinstance(body.get(key), str) for key in ("username", "password")
        ):
            return _message(400, 'the body must be {"username": string, "password": string}')
        expected = self.users.get(body["username"])
        if expected is None or not hmac.compare_digest(
            expected.encode(), body["password"].encode()
        ):
            return _message(401, "invalid username or password")
        return JSONResponse({"token": self.tokens.auth_token(body["username"])})

    async def _exchange(self, request: Request) -> Response:
        auth_token = _bearer(request)
        if auth_token is None:
            return _message(401, "missing bearer auth token")
        try:
            username = self.tokens.redeem_auth_token(auth_token)
        except TokenRejected as exc:
            return _message(401, str(exc))
        origin = request.headers.get("origin")
        access = self.tokens.access_token(username, audience=origin)
        refresh = self.tokens.refresh_token(username, audience=origin)
        return Response(
            refresh, media_type="text/html", headers={"Authorization": f"Bearer {access}"}
        )

    async def _refresh(self, request: Request) -> Response:
        refresh = _bearer(request)
        if refresh is None:
            return _message(401, "missing bearer refresh token")
        try:
            claims = self.tokens.check_refresh(refresh)
        except TokenRejected as exc:
            return _message(401, str(exc))
        access = self.tokens.access_token(
            claims["username"], audience=request.headers.get("origin") or claims.get("aud")
        )
        return Response(b"", headers={"Authorization": f"Bearer {access}"})

    async def _oauth(self, request: Request) -> Response:
        authorization = request.headers.get("authorization")
        try:
            grant = parse_client_credentials(
                await request.body(),
                request.headers.get("content-type", ""),
                authorization,
                self.oauth_clients,
                self.oauth_scopes,
            )
        except OAuthError as exc:
            headers = dict(NO_STORE)
            if exc.status == 401 and authorization:
                headers["WWW-Authenticate"] = 'Basic realm="token server"'
            return JSONResponse(exc.body(), status_code=exc.status, headers=headers)
        token, expires_in = self.tokens.client_access_token(
            grant.client_id, scope=grant.scope, audience=grant.audience
        )
        with self._lock:
            self._oauth_grants.append(
                {
                    "client_id": grant.client_id,
                    "scope": grant.scope,
                    "audience": grant.audience,
                    "client_auth": grant.client_auth,
                }
            )
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": expires_in,
        }
        if grant.scope:
            body["scope"] = grant.scope
        return JSONResponse(body, headers=NO_STORE)


@contextmanager
def start_token_server(
    *,
    access_lifetime: float = 3600.0,
    refresh_lifetime: float = 30 * 86400.0,
    users: Mapping[str, str] | None = None,
    oauth_clients: Mapping[str, str] | None = None,
    oauth_scopes: Collection[str] | None = None,
    tls: TlsCert | None = None,
) -> Iterator[TokenServer]:
    """A running TokenServer (default user doctor/s3cret, OAuth client proxy /
    client-secret), stopped on exit. ``oauth_scopes``: the only scopes a client may
    ask for (None: any). ``tls``: serve HTTPS with that certificate."""
    server = TokenServer(
        access_lifetime=access_lifetime,
        refresh_lifetime=refresh_lifetime,
        users=users,
        oauth_clients=oauth_clients,
        oauth_scopes=oauth_scopes,
        tls=tls,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
