"""Schema of ``access.json``: who may call the proxy, and which models.

The file is optional; without it the proxy is open, as the original was. With it,
every inference request (and ``/status``) needs an API key or a bearer JWT::

    {
      "apiKeys": {
        "radiology-viewer": {"sha256": "<hex digest of the key>", "roles": ["radiologist"]}
      },
      "jwt": {
        "jwksUri": "https://login.hospital.local/realms/imaging/protocol/openid-connect/certs",
        "issuer": "https://login.hospital.local/realms/imaging",
        "audience": "model-proxy",
        "algorithms": ["RS256"],
        "rolesClaim": "realm_access.roles"
      },
      "models": {
        "d4e548ad-f365-4c34-918b-4e61a8b896f0": {"roles": ["radiologist"], "keys": ["batch"]}
      },
      "unlistedModels": "allow",
      "servers": {"<server uuid>": {"roles": ["radiologist"]}},
      "monitoring": {"keys": ["ops"], "roles": ["admin"]}
    }

``servers`` limits who may make the proxy query a PACS of servers.json (a server not
listed: every authenticated caller); ``monitoring`` limits ``/status`` (and any
future ``/metrics``) to the callers it lists (absent: every authenticated caller).

Validators raise ``ValueError("expected X, got Y")``; the loader adds file and field.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from model_proxy.config.checks import (
    check_http_url,
    check_tls_verify,
    describe,
    describe_type,
    is_member,
)

# Asymmetric algorithms only: with an HMAC algorithm a public key could be
# misused as the shared secret, and "none" is no signature at all.
ALLOWED_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")

ACCESS_FIELDS: dict[str, str] = {
    "apiKeys": 'an object of {"<key name>": {"sha256": "<hex digest>"}}',
    "apiKeys.*.sha256": "the SHA-256 hex digest of the key (model-proxy gen-api-key prints it)",
    "apiKeys.*.roles": "an array of role names",
    "jwt": "an object with jwksUri or publicKeyFile, issuer and audience",
    "jwt.jwksUri": "a string (an http(s):// URL of a JSON Web Key Set)",
    "jwt.publicKeyFile": "the path of a PEM public key file",
    "jwt.issuer": 'a string (the tokens\' "iss" claim)',
    "jwt.audience": 'a string or an array of strings (accepted "aud" values)',
    "jwt.algorithms": f"a non-empty array of {', '.join(ALLOWED_ALGORITHMS)}",
    "jwt.rolesClaim": 'a dotted claim path such as "roles" or "realm_access.roles"',
    "jwt.leewaySeconds": "a number of seconds from 0 to 300",
    "jwt.jwksCacheSeconds": "a number of seconds from 1 to 86400",
    "jwt.jwksRefetchSeconds": "a number of seconds from 0 to 86400",
    "jwt.tlsVerify": "true, false or the path of a CA bundle file",
    "models": 'an object of {"<model uuid>": {"keys": [...], "subjects": [...], "roles": [...]}}',
    "models.*.keys": "an array of names from apiKeys",
    "models.*.subjects": 'an array of JWT subjects ("sub" claims)',
    "models.*.roles": "an array of role names",
    "unlistedModels": '"allow" (any authenticated caller) or "deny"',
    "servers": 'an object of {"<server uuid>": {"keys": [...], "subjects": [...], "roles": [...]}}',
    "servers.*.keys": "an array of names from apiKeys",
    "servers.*.subjects": 'an array of JWT subjects ("sub" claims)',
    "servers.*.roles": "an array of role names",
    "monitoring": 'an object of {"keys": [...], "subjects": [...], "roles": [...]}',
    "monitoring.keys": "an array of names from apiKeys",
    "monitoring.subjects": 'an array of JWT subjects ("sub" claims)',
    "monitoring.roles": "an array of role names",
}


class UnlistedModels(StrEnum):
    ALLOW = "allow"
    DENY = "deny"


class _Schema(BaseModel):
    model_config = ConfigDict(
        frozen=True, populate_by_name=True, extra="forbid", hide_input_in_errors=True
    )


def _names(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"expected an array of {what}, got {describe(value)}")
    return tuple(dict.fromkeys(value))


class ApiKeyEntry(_Schema):
    """One client key, stored as the SHA-256 digest of the key, never the key."""

    sha256: StrictStr
    roles: tuple[str, ...] = ()

    @field_validator("sha256", mode="before")
    @classmethod
    def _check_digest(cls, value: object) -> str:
        if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value.lower()):
            # Never echo it: someone may have pasted the key itself here.
            raise ValueError(
                f"expected {ACCESS_FIELDS['apiKeys.*.sha256']}: 64 hexadecimal digits,"
                f" got {describe_type(value)}"
                + (f" of {len(value)} characters" if isinstance(value, str) else "")
            )
        return value.lower()

    @field_validator("roles", mode="before")
    @classmethod
    def _check_roles(cls, value: object) -> tuple[str, ...]:
        return _names(value, "role names")


class JwtSettings(_Schema):
    """How bearer tokens are verified: keys, issuer, audience, algorithms, roles."""

    jwks_uri: StrictStr | None = Field(None, alias="jwksUri")
    public_key_file: Path | None = Field(None, alias="publicKeyFile")
    issuer: StrictStr
    audience: tuple[str, ...]
    algorithms: tuple[str, ...] = ("RS256",)
    roles_claim: StrictStr = Field("roles", alias="rolesClaim")
    leeway_seconds: float = Field(30.0, alias="leewaySeconds", ge=0, le=300)
    jwks_cache_seconds: float = Field(3600.0, alias="jwksCacheSeconds", ge=1, le=86400)
    # At most one JWKS fetch per this many seconds when a token names an unknown
    # key: a stream of forged kids must not turn the proxy against the IdP.
    jwks_refetch_seconds: float = Field(30.0, alias="jwksRefetchSeconds", ge=0, le=86400)
    tls_verify: bool | str = Field(True, alias="tlsVerify")

    @field_validator("jwks_uri")
    @classmethod
    def _check_jwks_uri(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value)

    @field_validator("public_key_file", mode="before")
    @classmethod
    def _check_key_file(cls, value: object, info: ValidationInfo) -> Path | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ValueError(
                f"expected {ACCESS_FIELDS['jwt.publicKeyFile']}, got {describe(value)}"
            )
        path = Path(value).expanduser()
        if not path.is_absolute():
            base = (info.context or {}).get("base_dir")
            path = Path(base or Path.cwd()) / path
        if not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path.resolve()

    @field_validator("audience", mode="before")
    @classmethod
    def _check_audience(cls, value: object) -> tuple[str, ...]:
        if isinstance(value, str) and value:
            return (value,)
        if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            return tuple(value)
        raise ValueError(f"expected {ACCESS_FIELDS['jwt.audience']}, got {describe(value)}")

    @field_validator("algorithms", mode="before")
    @classmethod
    def _check_algorithms(cls, value: object) -> tuple[str, ...]:
        expected = ACCESS_FIELDS["jwt.algorithms"]
        if not isinstance(value, list) or not value:
            raise ValueError(f"expected {expected}, got {describe(value)}")
        refused = [item for item in value if item not in ALLOWED_ALGORITHMS]
        if refused:
            raise ValueError(
                f"expected {expected}, got {describe(refused[0])}"
                " (HMAC and none are refused: a public key must never act as a shared secret)"
            )
        return tuple(dict.fromkeys(value))

    @field_validator("roles_claim")
    @classmethod
    def _check_roles_claim(cls, value: str) -> str:
        if not value or any(not part for part in value.split(".")):
            raise ValueError(f"expected {ACCESS_FIELDS['jwt.rolesClaim']}, got {describe(value)}")
        return value

    @field_validator("tls_verify", mode="before")
    @classmethod
    def _check_tls_verify(cls, value: object, info: ValidationInfo) -> bool | str:
        return check_tls_verify(value, info)

    @model_validator(mode="after")
    def _one_key_source(self) -> JwtSettings:
        problem = key_source_problem(
            {"jwksUri": self.jwks_uri, "publicKeyFile": self.public_key_file}
        )
        if problem:
            raise ValueError(problem)
        return self


def key_source_problem(jwt: dict[str, object]) -> str | None:
    """Where the keys come from: exactly one of a JWKS URL and a PEM file."""
    given = [jwt.get(name) not in (None, "") for name in ("jwksUri", "publicKeyFile")]
    if given.count(True) != 1:
        return 'give exactly one of "jwksUri" and "publicKeyFile"'
    return None


class ModelRule(_Schema):
    """Who may use one model, one server or the monitoring routes: any listed key
    name, subject or role."""

    keys: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()

    @field_validator("keys", "subjects", "roles", mode="before")
    @classmethod
    def _check_names(cls, value: object, info: ValidationInfo) -> tuple[str, ...]:
        return _names(value, {"keys": "API key names"}.get(info.field_name or "", "strings"))


class AccessFile(_Schema):
    """The whole of access.json."""

    api_keys: dict[str, ApiKeyEntry] = Field(default_factory=dict, alias="apiKeys")
    jwt: JwtSettings | None = None
    models: dict[str, ModelRule] = Field(default_factory=dict)
    unlisted_models: UnlistedModels = Field(UnlistedModels.ALLOW, alias="unlistedModels")
    servers: dict[str, ModelRule] = Field(default_factory=dict)
    monitoring: ModelRule | None = None

    @field_validator("api_keys")
    @classmethod
    def _check_key_names(cls, value: dict[str, ApiKeyEntry]) -> dict[str, ApiKeyEntry]:
        for name in value:
            if not _NAME.fullmatch(name):
                raise ValueError(
                    f"key names are letters, digits and . _ @ - (at most 128), got {describe(name)}"
                )
        return value

    @field_validator("unlisted_models", mode="before")
    @classmethod
    def _check_unlisted(cls, value: object) -> UnlistedModels:
        if is_member(UnlistedModels, value):
            return UnlistedModels(str(value))
        raise ValueError(f"expected {ACCESS_FIELDS['unlistedModels']}, got {describe(value)}")
