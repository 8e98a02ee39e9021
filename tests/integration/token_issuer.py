"""The tokens of the token server test double: RS256 JWTs made and checked with PyJWT.

Three kinds, told apart by the ``token_type`` claim so that one kind is never accepted
in place of another:

- ``auth``: the one-off token that sign-in returns (or an administrator hands out).
  Single-use: redeeming it forgets it.
- ``refresh``: returned by the exchange; valid until its ``exp`` or until revoked;
  never rotated.
- ``access``: what the PACS accepts. Either a user's (claims ``exp``, ``iat``, ``iss``,
  ``name``, ``username``, ``canEditResource`` like the reference server) or an OAuth 2.0
  client's (``client_id``, ``scope``).

    issuer = TokenIssuer(access_lifetime=2.0, refresh_lifetime=60.0)
    username = issuer.redeem_auth_token(issuer.auth_token("doctor"))
    claims = issuer.verify_access(issuer.access_token(username))
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ALGORITHM = "RS256"
TOKEN_TYPE_CLAIM = "token_type"
AUTH, REFRESH, ACCESS = "auth", "refresh", "access"
AUTH_TOKEN_LIFETIME = 7 * 86400.0
REQUIRED_CLAIMS = ["exp", "iat", "iss", "jti", TOKEN_TYPE_CLAIM]


class TokenRejected(Exception):
    """A presented token is not (or no longer) good for what it was presented for."""


class TokenIssuer:
    """Signs and checks the tokens of one token server; thread-safe."""

    def __init__(self, *, access_lifetime: float, refresh_lifetime: float) -> None:
        self.issuer = "urn:model-proxy:test-token-server"
        self.access_lifetime = access_lifetime
        self.refresh_lifetime = refresh_lifetime
        # A fresh key per server: a token of one test's server is garbage to another's.
        self._private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_key = self._private_key.public_key()
        self.public_key_pem = self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
        self._lock = threading.Lock()
        self._open_auth_tokens: set[str] = set()  # jti of auth tokens not yet redeemed
        self._live_refresh_tokens: set[str] = set()
        self._issued_access_tokens: set[str] = set()
        self._expired_access_tokens: set[str] = set()

    def set_lifetimes(self, *, access: float | None = None, refresh: float | None = None) -> None:
        """Lifetimes of tokens issued from now on (issued ones keep their ``exp``)."""
        with self._lock:
            if access is not None:
                self.access_lifetime = access
            if refresh is not None:
                self.refresh_lifetime = refresh

    # --- minting ---------------------------------------------------------------------

    def _mint(self, token_type: str, lifetime: float, claims: dict[str, Any]) -> tuple[str, str]:
        now = time.time()
        jti = uuid.uuid4().hex
        payload = {
            **claims,
            "iss": self.issuer,
            "iat": int(now),
            # Whole seconds like real servers; rounded up so a token never lives shorter.
            "exp": math.ceil(now + lifetime),
            "jti": jti,
            TOKEN_TYPE_CLAIM: token_type,
        }
        return jwt.encode(payload, self._private_key, algorithm=ALGORITHM), jti

    @staticmethod
    def _user_claims(username: str, audience: str | None) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "sub": username,
            "username": username,
            "name": username.title(),
            "canEditResource": True,
        }
        if audience:
            claims["aud"] = audience
        return claims

    def auth_token(self, username: str) -> str:
        """A new single-use auth token for ``username``."""
        token, jti = self._mint(AUTH, AUTH_TOKEN_LIFETIME, self._user_claims(username, None))
        with self._lock:
            self._open_auth_tokens.add(jti)
        return token

    def access_token(self, username: str, *, audience: str | None = None) -> str:
        token, jti = self._mint(ACCESS, self.access_lifetime, self._user_claims(username, audience))
        with self._lock:
            self._issued_access_tokens.add(jti)
        return token

    def refresh_token(self, username: str, *, audience: str | None = None) -> str:
        token, jti = self._mint(
            REFRESH, self.refresh_lifetime, self._user_claims(username, audience)
        )
        with self._lock:
            self._live_refresh_tokens.add(jti)
        return token

    def client_access_token(
        self, client_id: str, *, scope: str | None, audience: str | None
    ) -> tuple[str, int]:
        """An OAuth 2.0 client-credentials access token and its ``expires_in``."""
        claims: dict[str, Any] = {"sub": client_id, "client_id": client_id}
        if scope:
            claims["scope"] = scope
        if audience:
            claims["aud"] = audience
        lifetime = self.access_lifetime
        token, jti = self._mint(ACCESS, lifetime, claims)
        with self._lock:
            self._issued_access_tokens.add(jti)
        return token, math.ceil(lifetime)

    # --- checking --------------------------------------------------------------------

    def decode(self, token: str, token_type: str) -> dict[str, Any]:
        """The verified claims of a ``token_type`` token; jwt.InvalidTokenError (its
        subclass jwt.ExpiredSignatureError for an expired one) otherwise."""
        claims: dict[str, Any] = jwt.decode(
            token,
            self.public_key,
            algorithms=[ALGORITHM],
            issuer=self.issuer,
            # ``aud`` is an Origin or an OAuth audience: the gateway checks it.
            options={"require": REQUIRED_CLAIMS, "verify_aud": False},
        )
        if claims[TOKEN_TYPE_CLAIM] != token_type:
            raise jwt.InvalidTokenError(
                f"expected a {token_type} token, got a {claims[TOKEN_TYPE_CLAIM]} token"
            )
        return claims

    def verify_access(self, token: str) -> dict[str, Any]:
        """Claims of a valid access token; raises jwt.ExpiredSignatureError when it has
        expired (or was expired by ``expire_access_tokens``), jwt.InvalidTokenError
        when it is not a valid access token of this server."""
        claims = self.decode(token, ACCESS)
        with self._lock:
            if claims["jti"] in self._expired_access_tokens:
                raise jwt.ExpiredSignatureError("Signature has expired")
        return claims

    def redeem_auth_token(self, token: str) -> str:
        """The username of a valid auth token, which is used up by this call."""
        try:
            claims = self.decode(token, AUTH)
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"invalid auth token: {exc}") from exc
        with self._lock:
            if claims["jti"] not in self._open_auth_tokens:
                raise TokenRejected("auth token already used")
            self._open_auth_tokens.remove(claims["jti"])
        return str(claims["username"])

    def check_refresh(self, token: str) -> dict[str, Any]:
        """The claims of a refresh token that is valid, unexpired and not revoked."""
        try:
            claims = self.decode(token, REFRESH)
        except jwt.ExpiredSignatureError as exc:
            raise TokenRejected("refresh token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"invalid refresh token: {exc}") from exc
        with self._lock:
            if claims["jti"] not in self._live_refresh_tokens:
                raise TokenRejected("refresh token revoked")
        return claims

    # --- administration ----------------------------------------------------------------

    def revoke_refresh_tokens(self) -> None:
        with self._lock:
            self._live_refresh_tokens.clear()

    def expire_access_tokens(self) -> None:
        """Every access token issued so far counts as expired from now on (a PACS then
        answers 401 although the token's ``exp`` lies ahead)."""
        with self._lock:
            self._expired_access_tokens |= self._issued_access_tokens
            self._issued_access_tokens.clear()

    @property
    def open_auth_tokens(self) -> int:
        """How many auth tokens are issued and not yet redeemed."""
        with self._lock:
            return len(self._open_auth_tokens)
