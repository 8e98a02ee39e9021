"""Verification of bearer JWTs: signature, algorithm, issuer, audience, lifetime.

Only the algorithms of access.json are accepted, and the token's own ``alg``
header is checked against them before any key is chosen; ``none`` and HMAC are
never accepted (the schema refuses them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jwt

from .jwks import JwksCache, UnknownKey
from .schema import JwtSettings

_REQUIRED_CLAIMS = ["exp", "iss", "aud", "sub"]


class InvalidToken(Exception):
    """The token cannot be trusted; the message says why, without echoing it."""


@dataclass(frozen=True)
class VerifiedToken:
    subject: str
    roles: frozenset[str]


class TokenVerifier:
    def __init__(self, settings: JwtSettings, *, jwks: JwksCache | None, public_key: Any) -> None:
        self._settings = settings
        self._jwks = jwks
        self._public_key = public_key

    async def verify(self, token: str) -> VerifiedToken:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("the bearer token is not a JWT") from None
        algorithm = header.get("alg")
        if algorithm not in self._settings.algorithms:
            accepted = ", ".join(self._settings.algorithms)
            raise InvalidToken(
                f"the bearer token is signed with {str(algorithm)[:20]!r}; accepted: {accepted}"
            )
        kid = header.get("kid")
        if self._jwks is not None:
            try:
                key = (await self._jwks.key_for(kid if isinstance(kid, str) else None)).key
            except UnknownKey:
                raise InvalidToken(
                    "the bearer token is signed with a key the issuer does not publish"
                ) from None
        else:
            key = self._public_key
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=list(self._settings.audience),
                issuer=self._settings.issuer,
                leeway=self._settings.leeway_seconds,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the bearer token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the bearer token is not valid yet") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("the bearer token is meant for another audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("the bearer token comes from another issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"the bearer token has no {exc.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the bearer token's signature does not verify") from None
        except (jwt.PyJWTError, ValueError, TypeError):
            # e.g. an EC token checked with an RSA key: unusable, not a crash.
            raise InvalidToken("the bearer token cannot be verified") from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("the bearer token's 'sub' claim is not a string")
        return VerifiedToken(subject, roles_in(claims, self._settings.roles_claim))


def roles_in(claims: dict[str, Any], path: str) -> frozenset[str]:
    """The roles at a dotted claim path: an array of strings or a space-separated string.

    >>> sorted(roles_in({"realm_access": {"roles": ["a", "b"]}}, "realm_access.roles"))
    ['a', 'b']
    >>> sorted(roles_in({"scope": "read write"}, "scope"))
    ['read', 'write']
    >>> roles_in({"roles": 3}, "roles")
    frozenset()
    """
    value: Any = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list):
        return frozenset(item for item in value if isinstance(item, str))
    return frozenset()
