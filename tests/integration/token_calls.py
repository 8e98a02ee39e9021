"""Client-side calls to the token server double, for tests that need tokens in hand
(docs/compatibility.md §7 shapes asserted on the way).

    access, refresh = exchange(http, tokens, tokens.issue_auth_token())
    http.get(pacs.status_url, headers=bearer(access))
"""

from __future__ import annotations

import base64
import time
from typing import Any
from urllib.parse import quote_plus

import httpx
import jwt
from token_server import TokenServer


def bearer(token: str) -> dict[str, str]:
    """Request headers presenting ``token``."""
    return {"Authorization": f"Bearer {token}"}


def basic(client_id: str, secret: str) -> dict[str, str]:
    """OAuth 2.0 client authentication by HTTP Basic (both parts form-encoded first,
    RFC 6749 2.3.1)."""
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return {"Authorization": f"Basic {base64.b64encode(raw).decode()}"}


def response_bearer(response: httpx.Response) -> str:
    """The token in a response's ``Authorization: Bearer ...`` header."""
    header: str = response.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    assert scheme == "Bearer" and token, dict(response.headers)
    return token


def unverified(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified (as the proxy reads ``exp``)."""
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def exchange(http: httpx.Client, tokens: TokenServer, auth_token: str) -> tuple[str, str]:
    """(access, refresh) for an auth token, asserting the exchange's response shape."""
    response = http.post(tokens.exchange_url, headers=bearer(auth_token))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    return response_bearer(response), response.text


def user_tokens(http: httpx.Client, tokens: TokenServer) -> tuple[str, str]:
    """(access, refresh) from exchanging a fresh auth token."""
    return exchange(http, tokens, tokens.issue_auth_token())


def oauth_form(**fields: str) -> dict[str, str]:
    """A client-credentials token request body."""
    return {"grant_type": "client_credentials", **fields}


def client_token(
    http: httpx.Client,
    tokens: TokenServer,
    client: tuple[str, str] = ("proxy", "client-secret"),
    **form: str,
) -> str:
    """A client-credentials access token (client authenticated by HTTP Basic)."""
    response = http.post(tokens.oauth_token_url, data=oauth_form(**form), headers=basic(*client))
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def wait_past(exp: int) -> None:
    """Sleep until the wall clock is past ``exp`` (a JWT's expiry)."""
    while time.time() <= exp:
        time.sleep(0.05)
