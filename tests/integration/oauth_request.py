"""Parsing and checking an OAuth 2.0 client-credentials token request (RFC 6749
section 4.4) for the token server test double; errors as in section 5.2.

    grant = parse_client_credentials(body, content_type, authorization, clients, None)
    # ClientCredentialsGrant(client_id="proxy", scope="pacs.read", audience=None, ...)
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote_plus

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class ClientCredentialsGrant:
    """An accepted request. ``client_auth`` is "basic" or "form" (where the secret was)."""

    client_id: str
    scope: str | None
    audience: str | None
    client_auth: str


class OAuthError(Exception):
    """An RFC 6749 5.2 error response: ``error`` code, description, HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def _form(body: bytes, content_type: str) -> dict[str, str]:
    if content_type.split(";", 1)[0].strip().lower() != FORM_CONTENT_TYPE:
        raise OAuthError("invalid_request", f"the body must be {FORM_CONTENT_TYPE}")
    try:
        fields = parse_qs(body.decode("ascii"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise OAuthError("invalid_request", "the body is not URL-encoded ASCII") from exc
    repeated = sorted(name for name, values in fields.items() if len(values) > 1)
    if repeated:  # RFC 6749 3.2: parameters MUST NOT be included more than once
        raise OAuthError("invalid_request", f"repeated parameter: {', '.join(repeated)}")
    return {name: values[0] for name, values in fields.items()}


def _basic_credentials(authorization: str) -> tuple[str, str]:
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise OAuthError("invalid_client", f"unsupported client authentication {scheme}", 401)
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise OAuthError("invalid_client", "malformed Basic credentials", 401) from exc
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise OAuthError("invalid_client", "malformed Basic credentials", 401)
    # RFC 6749 2.3.1: both are form-encoded before they are put into the Basic header.
    return unquote_plus(client_id), unquote_plus(secret)


def parse_client_credentials(
    body: bytes,
    content_type: str,
    authorization: str | None,
    clients: Mapping[str, str],
    allowed_scopes: Collection[str] | None,
) -> ClientCredentialsGrant:
    """Check a token request against ``clients`` (client id -> secret) and the
    ``allowed_scopes`` (None: any); raise OAuthError saying what is wrong."""
    form = _form(body, content_type)
    in_form = "client_id" in form or "client_secret" in form
    if authorization and in_form:
        raise OAuthError("invalid_request", "client authenticated by more than one method")
    if authorization:
        client_id, secret = _basic_credentials(authorization)
        client_auth = "basic"
    elif in_form:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        client_auth = "form"
    else:
        raise OAuthError("invalid_client", "no client authentication", 401)
    expected = clients.get(client_id)
    if expected is None or not hmac.compare_digest(secret.encode(), expected.encode()):
        raise OAuthError("invalid_client", "client authentication failed", 401)
    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthError("invalid_request", "grant_type is missing")
    if grant_type != "client_credentials":
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type} is not supported")
    scope = form.get("scope") or None
    if scope is not None and allowed_scopes is not None:
        unknown = sorted(set(scope.split()) - set(allowed_scopes))
        if unknown:
            raise OAuthError("invalid_scope", f"unknown scope: {' '.join(unknown)}")
    return ClientCredentialsGrant(client_id, scope, form.get("audience") or None, client_auth)
