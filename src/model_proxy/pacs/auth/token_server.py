"""``token`` and ``zhivaAuth``: access tokens from the original's token server.

The order of preference when a new access token is needed (docs/compatibility.md §7):

1. a fresher access token in the token file (another process or an earlier run
   renewed it);
2. ``refreshServer`` with the stored refresh token;
3. ``zhivaAuth``: sign in with login and password, then exchange the auth token;
   ``token``: exchange the configured auth token, but only if it was never
   exchanged before: it is single-use, and the token server would refuse it
   anyway. The administrator is told to configure a new one.

Every token obtained is written to the token file before it is used. With
``--redis`` the record lives in Redis instead (shared_tokens.py) and steps 2 and 3 run
only under the server's shared lock, after reading the record again: a replica that
waited for another one's renewal uses its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

from model_proxy.config import AuthType, ServerConfig
from model_proxy.errors import short_id
from model_proxy.pacs.auth.calls import (
    ExchangedTokens,
    TokenCallFailed,
    TokenServerClient,
    TokenStep,
)
from model_proxy.pacs.auth.session import PacsAuthRejected, auth_error
from model_proxy.pacs.auth.shared_tokens import SharedTokenStore
from model_proxy.pacs.auth.tokens import (
    AccessToken,
    StoredTokens,
    TokenStore,
    access_token,
    describe_expiry,
    fingerprint,
)

logger = logging.getLogger("model_proxy.auth")

NEW_AUTH_TOKEN_ADVICE = "put a new authToken in servers.json"  # noqa: S105

Save = Callable[[StoredTokens], Awaitable[None]]


class TokenServerRenewal:
    """Obtains access tokens for one ``token`` or ``zhivaAuth`` server."""

    def __init__(
        self,
        server: ServerConfig,
        calls: TokenServerClient,
        store: TokenStore,
        shared: SharedTokenStore | None = None,
    ) -> None:
        assert server.auth_type in (AuthType.TOKEN, AuthType.ZHIVA)
        assert server.sign_in_token_server is not None  # config validated
        self.server = server
        self.label = f"PACS {short_id(server.id)}"
        self._calls = calls
        self._store = store
        self._exchange_url = server.sign_in_token_server
        if server.auth_type is AuthType.TOKEN:
            assert server.auth_token is not None
            self._auth_token_seen = fingerprint("authToken", server.auth_token.get_secret_value())
            self.credential = fingerprint("token", self._auth_token_seen)
        else:
            assert server.sign_in_server is not None and server.login is not None
            self._auth_token_seen = ""
            self.credential = fingerprint("zhivaAuth", server.sign_in_server, server.login)
        # Auth tokens exchanged by this process, should the token file be unwritable.
        self._exchanged_here: set[str] = set()
        self._shared = shared
        # With --redis: the last record this replica read or wrote, written back should
        # Redis come back empty (restarted without persistence).
        self._last_shared = StoredTokens()

    @property
    def where_stored(self) -> str:
        """Where this server's tokens are kept: the token file, or its record in Redis."""
        if self._shared is not None:
            return f"Redis {self._shared.keys(self.server.id).record}"
        return self.token_file

    @property
    def token_file(self) -> str:
        return str(self._store.path_for(self.server.id))

    async def renew(self, current: AccessToken | None, *, rejected: bool) -> AccessToken:
        if self._shared is not None:
            return await self._renew_shared(self._shared, current)
        stored = await self.load()
        fresher = _fresher(stored, current)
        if fresher is not None:
            return fresher
        return await self._renew_from(stored, self._save)

    async def _renew_shared(
        self, shared: SharedTokenStore, current: AccessToken | None
    ) -> AccessToken:
        fresher = _fresher(await self._load_shared(shared), current)
        if fresher is not None:
            return fresher  # another replica renewed it: no lock needed
        async with shared.renewing(self.server.id, self.label) as held:
            stored = await self._load_shared(shared)  # renewed while this one waited?
            fresher = _fresher(stored, current)
            if fresher is not None:
                return fresher
            if stored == StoredTokens() and self._last_shared != StoredTokens():
                logger.warning(
                    "%s: Redis holds no PACS tokens for this server (restarted without"
                    " persistence?); writing back the ones this replica holds",
                    self.label,
                )
                stored = self._last_shared

            async def save(tokens: StoredTokens) -> None:
                self._last_shared = tokens
                await held.save(tokens)

            return await self._renew_from(stored, save)

    async def _load_shared(self, shared: SharedTokenStore) -> StoredTokens:
        stored = await shared.load(self.server.id, self.label)
        stored = stored.tokens_for(self.server.auth_type.value, self.credential)
        if stored != StoredTokens():
            self._last_shared = stored
        return stored

    async def _renew_from(self, stored: StoredTokens, save: Save) -> AccessToken:
        refresh_problem = "there is no refresh token"
        if stored.refresh_token and self.server.refresh_server:
            try:
                return await self.refresh(stored, save)
            except TokenCallFailed as failure:
                if not failure.rejected:
                    raise auth_error(self.label, failure) from None
                refresh_problem = failure.reason
                logger.warning("%s: %s; the refresh token is dropped", self.label, failure.reason)
                stored = replace(stored, access_token=None, refresh_token=None)
                await save(stored)
        elif not self.server.refresh_server:
            refresh_problem = 'no "refreshServer" is configured'
        if self.server.auth_type is AuthType.ZHIVA:
            try:
                return await self.exchange(await self.sign_in(), stored, save)
            except TokenCallFailed as failure:
                raise auth_error(self.label, failure, self.advice(failure)) from None
        if self.already_exchanged(stored):
            raise PacsAuthRejected(
                f"{self.label}: the access token expired or was refused and cannot be renewed"
                f" ({refresh_problem}); the authToken was already exchanged and works only"
                f" once: {NEW_AUTH_TOKEN_ADVICE}"
            )
        assert self.server.auth_token is not None
        try:
            return await self.exchange(self.server.auth_token.get_secret_value(), stored, save)
        except TokenCallFailed as failure:
            raise auth_error(self.label, failure, self.advice(failure)) from None

    async def load(self) -> StoredTokens:
        """The stored tokens of this credential: the token file's, with --redis the
        shared record's (read without the lock: to look, not to renew from)."""
        if self._shared is not None:
            return await self._load_shared(self._shared)
        stored = await asyncio.to_thread(self._store.load, self.server.id)
        return stored.tokens_for(self.server.auth_type.value, self.credential)

    @contextlib.asynccontextmanager
    async def renewing(self) -> AsyncIterator[tuple[StoredTokens, Save]]:
        """The tokens to renew from and where to save the new ones, for a caller that
        renews step by step (``check-auth``). With --redis: held under the server's
        shared lock, the record read again once it is held (another replica may have
        renewed meanwhile), and saved only while the lock and its fence are this
        process's, exactly as a replica renews."""
        shared = self._shared
        if shared is None:
            yield await self.load(), self._save
            return
        async with shared.renewing(self.server.id, self.label) as held:
            yield await self._load_shared(shared), held.save

    def already_exchanged(self, stored: StoredTokens) -> bool:
        seen = self._auth_token_seen
        return seen in stored.exchanged_auth_tokens or seen in self._exchanged_here

    async def sign_in(self) -> str:
        """The auth token for login and password (``zhivaAuth``)."""
        server = self.server
        assert server.sign_in_server and server.login and server.password
        auth_token = await self._calls.sign_in(
            server.sign_in_server, server.login, server.password.get_secret_value()
        )
        logger.info("%s: signed in at the token server as %s", self.label, server.login)
        return auth_token

    async def exchange(
        self, auth_token: str, stored: StoredTokens, save: Save | None = None
    ) -> AccessToken:
        """Exchange ``auth_token`` for access and refresh tokens, and store them."""
        exchanged: ExchangedTokens = await self._calls.exchange(self._exchange_url, auth_token)
        token = access_token(exchanged.access_token)
        updated = StoredTokens(
            auth_type=self.server.auth_type.value,
            credential=self.credential,
            access_token=exchanged.access_token,
            refresh_token=exchanged.refresh_token,
            exchanged_auth_tokens=stored.exchanged_auth_tokens,
        )
        if self.server.auth_type is AuthType.TOKEN:
            self._exchanged_here.add(self._auth_token_seen)
            updated = updated.with_exchanged(self._auth_token_seen)
        await (save or self._save)(updated)
        logger.info(
            "%s: exchanged the auth token; access token %s, %s",
            self.label,
            describe_expiry(token),
            "refresh token received" if exchanged.refresh_token else "no refresh token",
        )
        return token

    async def refresh(self, stored: StoredTokens, save: Save | None = None) -> AccessToken:
        """A new access token for the stored refresh token, stored."""
        assert stored.refresh_token and self.server.refresh_server
        value = await self._calls.refresh(self.server.refresh_server, stored.refresh_token)
        token = access_token(value)
        await (save or self._save)(replace(stored, access_token=value))
        logger.info("%s: refreshed the access token, %s", self.label, describe_expiry(token))
        return token

    async def aclose(self) -> None:
        await self._calls.aclose()

    async def _save(self, tokens: StoredTokens) -> None:
        try:
            await asyncio.to_thread(self._store.save, self.server.id, tokens)
        except OSError as exc:
            # The tokens still work in this process; only a restart would lose them.
            logger.error(
                "%s: cannot write the token file %s (%s); the tokens are lost at the next"
                " restart%s",
                self.label,
                self.token_file,
                exc.strerror or type(exc).__name__,
                f", and the authToken cannot be exchanged again: {NEW_AUTH_TOKEN_ADVICE} then"
                if self.server.auth_type is AuthType.TOKEN
                else "",
            )

    def advice(self, failure: TokenCallFailed) -> str:
        """What to do about ``failure``, to append to its reason."""
        if not failure.rejected or not (failure.status and 400 <= failure.status < 500):
            return ""
        if failure.status in (404, 405):
            return ""  # the message already points at the URL
        if failure.step is TokenStep.SIGN_IN:
            return '; check "login" and "password"'
        if failure.step is not TokenStep.EXCHANGE:
            return ""
        if self.server.auth_type is AuthType.TOKEN:
            return f": the auth token was already used or is invalid; {NEW_AUTH_TOKEN_ADVICE}"
        return ": the token server refused the auth token it had just issued at sign-in"


def _fresher(stored: StoredTokens, current: AccessToken | None) -> AccessToken | None:
    """The stored access token if it is another one than ``current`` and still fresh
    (another process, an earlier run or another replica renewed it)."""
    if stored.access_token and (current is None or stored.access_token != current.value):
        candidate = access_token(stored.access_token, just_issued=False)
        if candidate.is_fresh(time.time()):
            return candidate
    return None
