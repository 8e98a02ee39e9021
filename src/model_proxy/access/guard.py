"""Who is calling, and may they call this model: the proxy's client authentication.

Without access.json the guard lets everyone in as an anonymous caller, as the
original did. With it, a request carries either an API key
(``X-API-Key: <key>`` or ``Authorization: ApiKey <key>``) or a bearer JWT
(``Authorization: Bearer <jwt>``); anything else is 401 with a ``WWW-Authenticate``
challenge. A caller a model's rule does not list gets the original's 403.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from starlette.datastructures import Headers

from model_proxy.errors import ErrorCode, Forbidden, Unauthorized
from model_proxy.upstream.clients import Timeouts

from .jwks import JwksCache, JwksCaches
from .keys import find_api_key
from .loader import AccessPolicy
from .schema import ModelRule, UnlistedModels
from .tokens import InvalidToken, TokenVerifier

logger = logging.getLogger(__name__)

NO_ACCESS = "You have no access to this model"  # the original's words, exactly
# A request waits for the JWKS fetch: keep it short.
JWKS_TIMEOUTS = Timeouts(connect=5.0, idle=10.0)
_REALM = 'realm="model-proxy"'


class CallerKind(StrEnum):
    ANONYMOUS = "anonymous"
    API_KEY = "api-key"
    JWT = "jwt"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: a key name or a JWT subject, never the secret itself."""

    kind: CallerKind
    name: str | None = None
    roles: frozenset[str] = frozenset()

    @property
    def identity(self) -> str:
        """``"api-key:viewer"``, ``"jwt:alice"`` or ``"anonymous"``, for logs and audit."""
        return f"{self.kind}:{self.name}" if self.name is not None else str(self.kind)


ANONYMOUS = Caller(CallerKind.ANONYMOUS)


class AccessGuard:
    """The rules of one access.json (or none), as one config state holds them.

    A reload builds a new guard with the new state; a request keeps the guard of the
    state it leased. JWKS caches come from the process-wide ``JwksCaches``, so a
    reload that keeps the JWT settings does not fetch the keys again.
    """

    def __init__(self, policy: AccessPolicy | None, *, jwks: JwksCache | None = None) -> None:
        self.policy = policy
        self.jwks = jwks
        jwt = policy.jwt if policy is not None else None
        self._verifier = (
            TokenVerifier(jwt, jwks=jwks, public_key=policy.public_key)
            if jwt is not None and policy is not None
            else None
        )

    @classmethod
    def build(cls, policy: AccessPolicy | None, caches: JwksCaches) -> AccessGuard:
        """The guard of ``policy``, holding a JWKS cache from ``caches`` if it needs
        one; ``release`` gives it back."""
        jwt = policy.jwt if policy is not None else None
        jwks = caches.acquire(jwt) if jwt is not None and jwt.jwks_uri is not None else None
        return cls(policy, jwks=jwks)

    async def release(self, caches: JwksCaches) -> None:
        if self.jwks is not None:
            await caches.release(self.jwks)
            self.jwks = None

    @property
    def enabled(self) -> bool:
        return self.policy is not None

    async def authenticate(self, headers: Headers) -> Caller:
        """The caller behind the request's credentials; Unauthorized when there are none
        or they are wrong."""
        if self.policy is None:
            return ANONYMOUS
        api_key = headers.get("x-api-key", "").strip()
        authorization = headers.get("authorization", "").strip()
        if api_key and authorization:
            raise self._unauthorized(
                "send one credential: X-API-Key or Authorization, not both",
                ErrorCode.AMBIGUOUS_CREDENTIALS,
            )
        scheme, _, value = authorization.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if api_key or scheme == "apikey":
            return self._by_api_key(api_key or value)
        if scheme == "bearer" and value:
            return await self._by_token(value)
        if authorization:
            raise self._unauthorized(
                f"{_describe_scheme(scheme)}; {self._expected()}",
                ErrorCode.UNSUPPORTED_CREDENTIALS,
            )
        raise self._unauthorized(
            f"authentication required: {self._expected()}", ErrorCode.UNAUTHENTICATED
        )

    def authorize(self, caller: Caller, model_id: str) -> None:
        """Forbidden (the original's 403) unless ``caller`` may call ``model_id``."""
        if self.policy is None:
            return
        rule = self.policy.models.get(model_id)
        if rule is None:
            if self.policy.unlisted_models is UnlistedModels.ALLOW:
                return
        elif _grants(rule, caller):
            return
        logger.debug("%s may not call model %s", caller.identity, model_id)
        raise Forbidden(NO_ACCESS, code=ErrorCode.NO_ACCESS)

    def authorize_server(self, caller: Caller, server_id: str, *, chosen: bool) -> None:
        """Forbidden unless ``caller`` may make the proxy query ``server_id`` (a server
        access.json does not list: anyone); ``chosen``: named by ?server=, else the
        default one."""
        if self.policy is None:
            return
        rule = self.policy.servers.get(server_id)
        if rule is None or _grants(rule, caller):
            return
        logger.debug("%s may not use server %s", caller.identity, server_id)
        which = "server" if chosen else "the default server"
        hint = "" if chosen else "; choose one you may use with ?server=<uuid>"
        raise Forbidden(
            f"You have no access to {which} {server_id}{hint}", code=ErrorCode.NO_SERVER_ACCESS
        )

    def authorize_monitoring(self, caller: Caller, *, route: str = "/status") -> None:
        """Forbidden unless ``caller`` may see a monitoring route (/status, /metrics):
        access.json's ``monitoring`` rule lists it, or there is no such rule."""
        if self.policy is None or self.policy.monitoring is None:
            return
        if _grants(self.policy.monitoring, caller):
            return
        logger.debug("%s may not see the monitoring routes", caller.identity)
        raise Forbidden(
            f'You have no access to {route} (access.json grants it under "monitoring")',
            code=ErrorCode.NO_MONITORING_ACCESS,
        )

    def _by_api_key(self, presented: str) -> Caller:
        assert self.policy is not None
        if not self.policy.api_keys:
            raise self._unauthorized(
                f"API keys are not accepted here; {self._expected()}",
                ErrorCode.UNSUPPORTED_CREDENTIALS,
            )
        key = find_api_key(presented, self.policy.api_keys)
        if key is None:
            raise self._unauthorized("unknown API key", ErrorCode.INVALID_API_KEY)
        return Caller(CallerKind.API_KEY, key.name, key.roles)

    async def _by_token(self, token: str) -> Caller:
        if self._verifier is None:
            raise self._unauthorized(
                f"bearer tokens are not accepted here; {self._expected()}",
                ErrorCode.UNSUPPORTED_CREDENTIALS,
            )
        try:
            verified = await self._verifier.verify(token)
        except InvalidToken as exc:
            raise self._unauthorized(
                str(exc), ErrorCode.INVALID_TOKEN, error="invalid_token"
            ) from None
        return Caller(CallerKind.JWT, verified.subject, verified.roles)

    def _expected(self) -> str:
        assert self.policy is not None
        ways = []
        if self.policy.api_keys:
            ways.append("an API key in X-API-Key")
        if self.policy.jwt is not None:
            ways.append("a bearer token in Authorization")
        return "send " + " or ".join(ways)

    def _unauthorized(
        self, message: str, code: ErrorCode, *, error: str | None = None
    ) -> Unauthorized:
        assert self.policy is not None
        challenges = []
        if self.policy.jwt is not None:
            extra = f', error="{error}"' if error else ""
            challenges.append(f"Bearer {_REALM}{extra}")
        if self.policy.api_keys:
            challenges.append(f"ApiKey {_REALM}")
        return Unauthorized(message, code=code, challenge=", ".join(challenges))


def _grants(rule: ModelRule, caller: Caller) -> bool:
    """Does ``rule`` list the caller's key name, JWT subject or one of its roles."""
    return (
        (caller.kind is CallerKind.API_KEY and caller.name in rule.keys)
        or (caller.kind is CallerKind.JWT and caller.name in rule.subjects)
        or not caller.roles.isdisjoint(rule.roles)
    )


# Schemes a client may well send by mistake (IANA's registry); only these are named back.
_KNOWN_SCHEMES = frozenset(
    {"basic", "digest", "negotiate", "ntlm", "hoba", "mutual", "token", "dpop", "privatetoken"}
    | {"scram-sha-1", "scram-sha-256", "vapid", "aws4-hmac-sha256", "concealed", "gnap"}
)


def _describe_scheme(scheme: str) -> str:
    """The unsupported scheme, named only when it is a known one: a value without a
    scheme (a bare key or token pasted into Authorization) is a secret, never echoed."""
    if scheme in _KNOWN_SCHEMES:
        return f"unsupported Authorization scheme {scheme!r}"
    return "the Authorization header has no supported scheme (like Bearer or ApiKey)"
