"""Authentication towards a PACS, as httpx auth flows.

Each ``authType`` of servers.json maps to an ``httpx.Auth``, so the DICOMweb client
never knows which scheme is in use (the shape of httpx's own DigestAuth)::

    ""          no Authorization header
    basicAuth   httpx.BasicAuth(login, password)
    bearer      the configured authToken, as is
    token       \\
    zhivaAuth    > SessionBearerAuth: a TokenSession's access token; on a 401 the
    oauth2      /  session renews it once and the request is sent once more
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Generator
from pathlib import Path

import httpx

from model_proxy.config import AuthType, ServerConfig
from model_proxy.errors import short_id
from model_proxy.pacs.auth.calls import TokenServerClient
from model_proxy.pacs.auth.oauth2 import ClientCredentialsRenewal
from model_proxy.pacs.auth.session import FailureMemory, Renewal, TokenSession
from model_proxy.pacs.auth.shared_tokens import SharedTokenStore
from model_proxy.pacs.auth.token_server import TokenServerRenewal
from model_proxy.pacs.auth.tokens import TokenStore
from model_proxy.upstream.clients import Timeouts

TOKEN_AUTH_TYPES = (AuthType.TOKEN, AuthType.ZHIVA, AuthType.OAUTH2)


class BearerAuth(httpx.Auth):
    """A static bearer token (``authType: "bearer"``)."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._header
        yield request


class SessionBearerAuth(httpx.Auth):
    """The access token of a TokenSession; one renewal and one retry on a 401."""

    def __init__(self, session: TokenSession) -> None:
        self.session = session

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("token authentication needs an httpx.AsyncClient")
        yield request  # pragma: no cover - makes this a generator

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.session.token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401:
            return
        # Expired early, revoked, or the token server's clock differs: renew once.
        token = await self.session.replace_rejected(token)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request


class PacsAuth:
    """The auth flows of all servers; owns their token sessions.

    Cheap to build: nothing is read or fetched until a request needs a token, and
    the token files hold the state, so a rebuilt PacsAuth (config reload) carries on
    where the previous one stopped without a new sign-in or exchange.
    """

    def __init__(
        self,
        data_dir: Path,
        timeouts: Timeouts,
        failure_memory: FailureMemory | None = None,
        on_renewal: Callable[[str, bool], None] | None = None,
        shared: SharedTokenStore | None = None,
    ) -> None:
        self.store = TokenStore(Path(data_dir) / "tokens")
        # --redis: token and zhivaAuth tokens live in Redis, shared by the replicas; the
        # store is the process's, handed on from state to state across reloads.
        self.shared = shared
        self._timeouts = timeouts
        self._failure_memory = failure_memory or FailureMemory()
        # (server id, renewed?) after each token renewal: the metrics count them.
        self._on_renewal = on_renewal
        self._sessions: dict[str, TokenSession] = {}

    def for_server(self, server: ServerConfig) -> httpx.Auth | None:
        """The auth flow for ``server``'s authType (None for no auth)."""
        if server.auth_type is AuthType.NONE:
            return None
        if server.auth_type is AuthType.BASIC:
            assert server.login is not None and server.password is not None  # config validated
            return httpx.BasicAuth(server.login, server.password.get_secret_value())
        if server.auth_type is AuthType.BEARER:
            assert server.auth_token is not None
            return BearerAuth(server.auth_token.get_secret_value())
        return SessionBearerAuth(self.session_for(server))

    def session_for(self, server: ServerConfig) -> TokenSession:
        """The token session of a token, zhivaAuth or oauth2 server (one per server)."""
        session = self._sessions.get(server.id)
        if session is None:
            session = TokenSession(
                f"PACS {short_id(server.id)}",
                self.renewal_for(server),
                memory=self._failure_memory,
                on_renewal=self._renewal_observer(server.id),
            )
            self._sessions[server.id] = session
        return session

    def existing_session(self, server_id: str) -> TokenSession | None:
        """The server's token session if a request has needed one yet (for /status)."""
        return self._sessions.get(server_id)

    def _renewal_observer(self, server_id: str) -> Callable[[bool], None] | None:
        on_renewal = self._on_renewal
        if on_renewal is None:
            return None
        return lambda renewed: on_renewal(server_id, renewed)

    def renewal_for(self, server: ServerConfig) -> Renewal:
        calls = TokenServerClient(tls_verify=server.tls_verify, timeouts=self._timeouts)
        if server.auth_type is AuthType.OAUTH2:
            return ClientCredentialsRenewal(server, calls)
        if server.auth_type in (AuthType.TOKEN, AuthType.ZHIVA):
            return TokenServerRenewal(server, calls, self.store, self.shared)
        raise ValueError(f"authType {server.auth_type.value!r} has no token session")

    async def aclose(self) -> None:
        for session in self._sessions.values():
            await session.aclose()
        self._sessions.clear()
