"""The token server double itself, over real HTTP: every flow of docs/compatibility.md §7 and
the controls tests use (OAuth 2.0: test_token_oauth.py; the gateway in front of
Orthanc: test_token_pacs.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from harness import http_client
from token_calls import (
    basic,
    bearer,
    exchange,
    oauth_form,
    response_bearer,
    unverified,
    wait_past,
)
from token_server import TokenServer, start_token_server

USER_CLAIMS = {"exp", "iat", "iss", "name", "username", "canEditResource"}


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with http_client(timeout=10.0) as client:
        yield client


# --- sign-in and exchange ------------------------------------------------------------


def test_sign_in_then_exchange_gives_user_tokens(
    http: httpx.Client, token_server: TokenServer
) -> None:
    signed_in = http.post(
        token_server.sign_in_url, json={"username": "doctor", "password": "s3cret"}
    )
    assert signed_in.status_code == 200, signed_in.text
    access, refresh = exchange(http, token_server, signed_in.json()["token"])

    claims = token_server.verify_access(access)
    assert claims.keys() >= USER_CLAIMS
    assert claims["username"] == "doctor" and claims["exp"] - claims["iat"] in (3600, 3601)
    assert jwt.get_unverified_header(access)["alg"] == "RS256"
    assert unverified(refresh)["exp"] - unverified(refresh)["iat"] in (30 * 86400, 30 * 86400 + 1)
    # The public key alone verifies it, as a PACS would.
    jwt.decode(access, token_server.public_key_pem, algorithms=["RS256"])
    assert token_server.calls == {"sign_in": 1, "exchange": 1}
    assert token_server.successes == token_server.calls


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"username": "doctor", "password": "wrong"}, 401),
        ({"username": "nobody", "password": "s3cret"}, 401),
        ({"username": "doctor"}, 400),
        (["doctor", "s3cret"], 400),
    ],
)
def test_sign_in_rejects_bad_credentials_with_a_message(
    http: httpx.Client, token_server: TokenServer, body: Any, status: int
) -> None:
    response = http.post(token_server.sign_in_url, json=body)
    assert response.status_code == status
    assert response.json()["message"]
    assert token_server.calls["sign_in"] == 1 and token_server.successes["sign_in"] == 0


def test_auth_token_is_single_use(http: httpx.Client, token_server: TokenServer) -> None:
    auth_token = token_server.issue_auth_token()
    exchange(http, token_server, auth_token)
    again = http.post(token_server.exchange_url, headers=bearer(auth_token))
    assert again.status_code == 401
    assert "already used" in again.json()["message"]
    assert token_server.calls["exchange"] == 2 and token_server.successes["exchange"] == 1


def test_auth_token_is_single_use_under_concurrent_exchanges(token_server: TokenServer) -> None:
    auth_token = token_server.issue_auth_token()

    async def exchange_all() -> list[int]:
        async with httpx.AsyncClient(trust_env=False, timeout=30.0) as client:
            calls = [
                client.post(token_server.exchange_url, headers=bearer(auth_token))
                for _ in range(10)
            ]
            return [response.status_code for response in await asyncio.gather(*calls)]

    assert sorted(asyncio.run(exchange_all())) == [200] + [401] * 9
    assert token_server.successes["exchange"] == 1


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic ZG9jdG9yOnMzY3JldA=="}, bearer("not-a-jwt")],
)
def test_exchange_without_a_valid_auth_token_is_401(
    http: httpx.Client, token_server: TokenServer, headers: dict[str, str]
) -> None:
    response = http.post(token_server.exchange_url, headers=headers)
    assert response.status_code == 401 and response.json()["message"]


def test_tokens_of_one_kind_are_not_accepted_as_another(
    http: httpx.Client, token_server: TokenServer
) -> None:
    auth_token = token_server.issue_auth_token()
    access, refresh = exchange(http, token_server, auth_token)
    for not_access in (refresh, auth_token):
        with pytest.raises(jwt.InvalidTokenError):
            token_server.verify_access(not_access)
    for not_refresh in (access, auth_token):
        assert http.post(token_server.refresh_url, headers=bearer(not_refresh)).status_code == 401
    assert http.post(token_server.exchange_url, headers=bearer(refresh)).status_code == 401


def test_tokens_of_another_server_are_invalid(
    http: httpx.Client, token_server: TokenServer
) -> None:
    with start_token_server() as other:
        access, refresh = exchange(http, other, other.issue_auth_token())
    with pytest.raises(jwt.InvalidSignatureError):
        token_server.verify_access(access)
    assert http.post(token_server.refresh_url, headers=bearer(refresh)).status_code == 401


# --- refresh and expiry ----------------------------------------------------------------


def test_refresh_gives_new_access_tokens_and_keeps_the_refresh_token(
    http: httpx.Client, token_server: TokenServer
) -> None:
    first, refresh = exchange(http, token_server, token_server.issue_auth_token())
    renewed = []
    for _ in range(2):  # not rotated: the same refresh token works again
        response = http.post(token_server.refresh_url, headers=bearer(refresh))
        assert response.status_code == 200 and response.content == b""
        renewed.append(response_bearer(response))
    assert len({first, *renewed}) == 3
    assert all(token_server.verify_access(token)["username"] == "doctor" for token in renewed)

    token_server.revoke_refresh_tokens()
    revoked = http.post(token_server.refresh_url, headers=bearer(refresh))
    assert revoked.status_code == 401 and "revoked" in revoked.json()["message"]
    assert token_server.calls["refresh"] == 3 and token_server.successes["refresh"] == 2


def test_short_lifetimes_expire_within_the_test(
    http: httpx.Client, token_server: TokenServer
) -> None:
    # Two seconds between steps, so that a loaded machine does not make it flaky.
    token_server.set_lifetimes(access=2.0, refresh=4.0)
    access, refresh = exchange(http, token_server, token_server.issue_auth_token())
    assert token_server.verify_access(access)
    wait_past(unverified(access)["exp"])
    with pytest.raises(jwt.ExpiredSignatureError):
        token_server.verify_access(access)
    response = http.post(token_server.refresh_url, headers=bearer(refresh))
    assert response.status_code == 200  # the refresh token outlives the access token
    assert token_server.verify_access(response_bearer(response))

    wait_past(unverified(refresh)["exp"])
    expired = http.post(token_server.refresh_url, headers=bearer(refresh))
    assert expired.status_code == 401 and "expired" in expired.json()["message"]


def test_expire_access_tokens_expires_those_issued_so_far(
    http: httpx.Client, token_server: TokenServer
) -> None:
    access, refresh = exchange(http, token_server, token_server.issue_auth_token())
    token_server.expire_access_tokens()
    with pytest.raises(jwt.ExpiredSignatureError):
        token_server.verify_access(access)
    renewed = response_bearer(http.post(token_server.refresh_url, headers=bearer(refresh)))
    assert token_server.verify_access(renewed)["username"] == "doctor"


def test_fifty_concurrent_refreshes_all_succeed(
    http: httpx.Client, token_server: TokenServer
) -> None:
    _, refresh = exchange(http, token_server, token_server.issue_auth_token())
    token_server.set_delay(0.2)  # all 50 are in flight at the same time

    async def refresh_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(limits=limits, trust_env=False, timeout=30.0) as client:
            calls = [
                client.post(token_server.refresh_url, headers=bearer(refresh)) for _ in range(50)
            ]
            return await asyncio.gather(*calls)

    responses = asyncio.run(refresh_all())
    assert [response.status_code for response in responses] == [200] * 50
    assert len({response_bearer(response) for response in responses}) == 50
    assert token_server.calls["refresh"] == 50 == token_server.successes["refresh"]


# --- misbehaviour ----------------------------------------------------------------------


def test_controls_reject_unknown_endpoints(token_server: TokenServer) -> None:
    with pytest.raises(ValueError, match="endpoint must be one of"):
        token_server.fail_next(1, endpoint="signin")
    with pytest.raises(ValueError, match="endpoint must be one of"):
        token_server.set_delay(1.0, endpoint="token")


def test_fail_next_without_endpoint_fails_any_endpoint(
    http: httpx.Client, token_server: TokenServer
) -> None:
    token_server.fail_next(2, status=500)
    signed_in = http.post(
        token_server.sign_in_url, json={"username": "doctor", "password": "s3cret"}
    )
    oauth = http.post(
        token_server.oauth_token_url, data=oauth_form(), headers=basic("proxy", "client-secret")
    )
    assert (signed_in.status_code, oauth.status_code) == (500, 500)
    assert (
        http.post(
            token_server.oauth_token_url, data=oauth_form(), headers=basic("proxy", "client-secret")
        ).status_code
        == 200
    )


def test_fail_next_injects_failures_then_recovers(
    http: httpx.Client, token_server: TokenServer
) -> None:
    token_server.fail_next(2, status=503, endpoint="exchange")
    auth_token = token_server.issue_auth_token()
    for _ in range(2):
        failed = http.post(token_server.exchange_url, headers=bearer(auth_token))
        assert failed.status_code == 503 and failed.json()["message"]
    exchange(http, token_server, auth_token)  # the failures did not use the token up
    assert token_server.calls["exchange"] == 3 and token_server.successes["exchange"] == 1


def test_stopped_server_refuses_then_comes_back_with_its_state(
    http: httpx.Client, token_server: TokenServer
) -> None:
    _, refresh = exchange(http, token_server, token_server.issue_auth_token())
    token_server.stop()
    with pytest.raises(httpx.ConnectError):
        http.post(token_server.refresh_url, headers=bearer(refresh))
    token_server.start()
    assert http.post(token_server.refresh_url, headers=bearer(refresh)).status_code == 200


def test_origin_becomes_the_audience_and_is_recorded(
    http: httpx.Client, token_server: TokenServer
) -> None:
    origin = "https://viewer.example"
    response = http.post(
        token_server.exchange_url,
        headers=bearer(token_server.issue_auth_token()) | {"Origin": origin},
    )
    assert unverified(response_bearer(response))["aud"] == origin
    assert unverified(response.text)["aud"] == origin
    assert token_server.origins == [origin]
