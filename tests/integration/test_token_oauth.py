"""The OAuth 2.0 client-credentials endpoint of the token server double (RFC 6749
section 4.4, errors as in 5.2), over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from harness import http_client
from token_calls import basic, oauth_form
from token_server import TokenServer, start_token_server


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with http_client(timeout=10.0) as client:
        yield client


def test_oauth_client_credentials_in_the_form(
    http: httpx.Client, token_server: TokenServer
) -> None:
    response = http.post(
        token_server.oauth_token_url,
        data=oauth_form(client_id="proxy", client_secret="client-secret", scope="pacs.read"),
    )
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["scope"] == "pacs.read" and "refresh_token" not in body
    claims = token_server.verify_access(body["access_token"])
    assert claims["client_id"] == "proxy" and claims["scope"] == "pacs.read"
    assert token_server.oauth_grants == [
        {"client_id": "proxy", "scope": "pacs.read", "audience": None, "client_auth": "form"}
    ]


def test_oauth_client_credentials_by_basic_auth_with_encoded_id() -> None:
    clients = {"svc:pacs": "p@ss word/+"}
    with start_token_server(oauth_clients=clients) as tokens, http_client() as http:
        response = http.post(
            tokens.oauth_token_url,
            data=oauth_form(audience="https://pacs.example"),
            headers=basic("svc:pacs", "p@ss word/+"),
        )
        assert response.status_code == 200, response.text
        claims = tokens.verify_access(response.json()["access_token"])
    assert claims["client_id"] == "svc:pacs" and claims["aud"] == "https://pacs.example"
    assert "scope" not in response.json()


@pytest.mark.parametrize(
    ("form", "headers", "status", "error"),
    [
        (oauth_form(client_id="proxy", client_secret="wrong"), {}, 401, "invalid_client"),
        (oauth_form(), basic("proxy", "wrong"), 401, "invalid_client"),
        (oauth_form(client_id="nobody", client_secret="x"), {}, 401, "invalid_client"),
        (oauth_form(), {}, 401, "invalid_client"),
        (
            oauth_form(client_id="proxy", client_secret="client-secret"),
            basic("proxy", "client-secret"),
            400,
            "invalid_request",
        ),
        ({"client_id": "proxy", "client_secret": "client-secret"}, {}, 400, "invalid_request"),
        (
            {"grant_type": "password", "client_id": "proxy", "client_secret": "client-secret"},
            {},
            400,
            "unsupported_grant_type",
        ),
    ],
)
def test_oauth_errors_follow_rfc_6749(
    http: httpx.Client,
    token_server: TokenServer,
    form: dict[str, str],
    headers: dict[str, str],
    status: int,
    error: str,
) -> None:
    response = http.post(token_server.oauth_token_url, data=form, headers=headers)
    assert response.status_code == status
    assert response.json()["error"] == error and response.json()["error_description"]
    if "Authorization" in headers and status == 401:
        assert response.headers["www-authenticate"].startswith("Basic")
    assert token_server.calls["oauth_token"] == 1 and token_server.successes["oauth_token"] == 0


def test_oauth_scope_outside_the_allowed_ones_is_invalid_scope(http: httpx.Client) -> None:
    with start_token_server(oauth_scopes={"pacs.read"}) as tokens:
        response = http.post(
            tokens.oauth_token_url,
            data=oauth_form(scope="pacs.read pacs.write"),
            headers=basic("proxy", "client-secret"),
        )
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_scope",
        "error_description": "unknown scope: pacs.write",
    }


def test_oauth_json_body_is_invalid_request(http: httpx.Client, token_server: TokenServer) -> None:
    response = http.post(
        token_server.oauth_token_url,
        json={"grant_type": "client_credentials"},
        headers=basic("proxy", "client-secret"),
    )
    assert response.status_code == 400 and response.json()["error"] == "invalid_request"
