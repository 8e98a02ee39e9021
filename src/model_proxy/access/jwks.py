"""The signing keys of an identity provider, fetched from its JWKS URL and cached.

Keys are fetched on first use, kept for ``jwksCacheSeconds``, and fetched again
early when a token names a key id (``kid``) the cache does not know, which is how
an IdP's key rotation reaches us. Those early fetches are rate-limited to one per
``jwksRefetchSeconds``: a flood of tokens with made-up kids must not become a flood
of requests to the IdP. When a refresh fails the last good keys stay in use.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit

import jwt
import orjson

from model_proxy.errors import ErrorCode, UpstreamError
from model_proxy.upstream.clients import Timeouts, make_client, translate_errors

from .schema import JwtSettings

logger = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1024 * 1024


class JwksUnavailable(UpstreamError):
    """No key to check a token with, because the JWKS URL failed (502)."""

    default_code = ErrorCode.JWKS_UNAVAILABLE


class UnknownKey(LookupError):
    """The token's ``kid`` is not in the key set, even after a refetch."""


class JwksCache:
    def __init__(self, settings: JwtSettings, timeouts: Timeouts) -> None:
        assert settings.jwks_uri is not None
        self._uri = settings.jwks_uri
        self.settings = settings
        self._label = f"JWKS {urlsplit(settings.jwks_uri).netloc}"
        self._client = make_client(tls_verify=settings.tls_verify, timeouts=timeouts)
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last fetch, successful or not
        self._last_error: str | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key_for(self, kid: str | None) -> jwt.PyJWK:
        """The key a token names; raises UnknownKey or JwksUnavailable."""
        now = time.monotonic()
        expired = (
            self._fetched_at is None or now - self._fetched_at >= self.settings.jwks_cache_seconds
        )
        if (expired or self._lookup(kid) is None) and self._may_fetch(now):
            await self._refresh(self._attempted_at)
        if not self._keys:
            raise JwksUnavailable(self._last_error or f"{self._label}: no keys yet")
        key = self._lookup(kid)
        if key is None:
            raise UnknownKey(kid)
        return key

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        key = self._keys.get(kid)
        if key is None and kid is None and len(self._keys) == 1:
            # A token without kid against a one-key set: the key is unambiguous.
            key = next(iter(self._keys.values()))
        return key

    def _may_fetch(self, now: float) -> bool:
        return (
            self._attempted_at is None
            or now - self._attempted_at >= self.settings.jwks_refetch_seconds
        )

    async def _refresh(self, attempted_before: float | None) -> None:
        async with self._lock:
            if self._attempted_at != attempted_before:
                return  # another request fetched while this one waited
            self._attempted_at = time.monotonic()
            self.fetches += 1
            try:
                keys = await self._fetch()
            except JwksUnavailable as exc:
                self._last_error = exc.message
                if self._keys:
                    logger.warning(
                        "%s; still using the %d keys fetched before", exc.message, len(self._keys)
                    )
                else:
                    logger.warning("%s", exc.message)
                return
            self._keys = keys
            self._fetched_at = time.monotonic()
            self._last_error = None
            logger.info("%s: %d signing keys", self._label, len(keys))

    async def _fetch(self) -> dict[str | None, jwt.PyJWK]:
        with translate_errors(self._label, JwksUnavailable):
            async with self._client.stream("GET", self._uri) as response:
                if response.status_code != 200:
                    raise JwksUnavailable(f"{self._label}: answered HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise JwksUnavailable(f"{self._label}: key set larger than 1 MiB")
        try:
            document = orjson.loads(body)
            key_set = jwt.PyJWKSet.from_dict(document if isinstance(document, dict) else {})
        except (orjson.JSONDecodeError, jwt.PyJWTError) as exc:
            raise JwksUnavailable(f"{self._label}: not a usable JSON Web Key Set ({exc})") from None
        keys: dict[str | None, jwt.PyJWK] = {}
        for key in key_set.keys:
            if key.public_key_use in (None, "sig"):
                keys[key.key_id] = key
        if not keys:
            raise JwksUnavailable(f"{self._label}: no signing keys in the key set")
        return keys

    async def aclose(self) -> None:
        await self._client.aclose()


class JwksCaches:
    """The process's JWKS caches, one per JWT settings, shared by the config states
    that use them (counted): a reload that keeps the settings keeps the fetched keys,
    and a cache closes when the last state using it has closed."""

    def __init__(self, timeouts: Timeouts) -> None:
        self._timeouts = timeouts
        self._caches: dict[JwtSettings, JwksCache] = {}
        self._users: dict[JwtSettings, int] = {}

    def acquire(self, settings: JwtSettings) -> JwksCache:
        cache = self._caches.get(settings)
        if cache is None:
            cache = self._caches[settings] = JwksCache(settings, self._timeouts)
        self._users[settings] = self._users.get(settings, 0) + 1
        return cache

    async def release(self, cache: JwksCache) -> None:
        settings = cache.settings
        if self._caches.get(settings) is not cache:
            return
        self._users[settings] -= 1
        if self._users[settings] == 0:
            del self._users[settings], self._caches[settings]
            await cache.aclose()

    async def aclose(self) -> None:
        """At shutdown: close every cache, used or not."""
        caches = list(self._caches.values())
        self._caches.clear()
        self._users.clear()
        for cache in caches:
            await cache.aclose()
