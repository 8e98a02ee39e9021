"""The token-protected PACS of the test bed: a real Orthanc behind the verifying gateway
(token_gateway.py), over real HTTP, with tokens from the token server double."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from faults import closed_port_url
from harness import OrthancServer, TlsCert, http_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route
from threaded_server import ThreadedServer
from token_calls import bearer, client_token, unverified, user_tokens, wait_past
from token_gateway import Gateway, start_token_gateway
from token_server import TokenServer, start_token_server

from model_proxy.sample_data import SampleStudy

STUDY_INSTANCE_UID = "0020000D"
DICOM_JSON = {"Accept": "application/dicom+json"}


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with http_client(timeout=30.0) as client:
        yield client


def study_uids(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {study[STUDY_INSTANCE_UID]["Value"][0] for study in response.json()}


def multipart_part_count(response: httpx.Response) -> int:
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related"), content_type
    boundary = content_type.split("boundary=", 1)[1].split(";", 1)[0].strip('"')
    return response.content.count(b"--" + boundary.encode()) - 1  # minus the closing one


def test_valid_token_reaches_orthanc_qido_and_wado(
    http: httpx.Client, token_pacs: Gateway, token_server: TokenServer, sample_study: SampleStudy
) -> None:
    access, _ = user_tokens(http, token_server)
    found = http.get(f"{token_pacs.dicomweb_url}/studies", headers=bearer(access) | DICOM_JSON)
    assert sample_study.study_uid in study_uids(found)

    series = sample_study.main_series
    url = f"{token_pacs.dicomweb_url}/studies/{sample_study.study_uid}/series/{series.series_uid}"
    retrieved = http.get(
        url, headers=bearer(access) | {"Accept": 'multipart/related; type="application/dicom"'}
    )
    assert retrieved.status_code == 200, retrieved.text
    assert multipart_part_count(retrieved) == len(series.sop_uids)
    assert token_pacs.status_counts == {200: 2}
    assert token_pacs.outcomes == {"accepted": 2}
    assert token_pacs.seen_tokens == {access: 2}


def test_status_uri_answers_200_with_a_token(
    http: httpx.Client, token_pacs: Gateway, token_server: TokenServer
) -> None:
    access, _ = user_tokens(http, token_server)
    assert http.get(token_pacs.status_url, headers=bearer(access)).status_code == 200


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic dXNlcjpwYXNz"}])
def test_missing_bearer_token_is_401(
    http: httpx.Client, token_pacs: Gateway, headers: dict[str, str]
) -> None:
    response = http.get(token_pacs.status_url, headers=headers)
    assert response.status_code == 401 and response.json()["message"]
    assert response.headers["www-authenticate"] == 'Bearer realm="pacs"'
    assert token_pacs.outcomes == {"missing": 1}


def test_expired_token_is_401_then_a_refreshed_one_passes(
    http: httpx.Client, token_pacs: Gateway, token_server: TokenServer
) -> None:
    token_server.set_lifetimes(access=2.0)  # 2 s: room for a slow machine before expiry
    access, refresh = user_tokens(http, token_server)
    assert http.get(token_pacs.status_url, headers=bearer(access)).status_code == 200
    wait_past(unverified(access)["exp"])

    expired = http.get(token_pacs.status_url, headers=bearer(access))
    assert expired.status_code == 401
    assert 'error="invalid_token"' in expired.headers["www-authenticate"]
    renewed = http.post(token_server.refresh_url, headers=bearer(refresh))
    fresh = renewed.headers["authorization"].removeprefix("Bearer ")
    assert http.get(token_pacs.status_url, headers=bearer(fresh)).status_code == 200
    assert token_pacs.outcomes == {"accepted": 2, "expired": 1}


def test_expire_access_tokens_makes_the_pacs_answer_401(
    http: httpx.Client, token_pacs: Gateway, token_server: TokenServer
) -> None:
    access, _ = user_tokens(http, token_server)
    token_server.expire_access_tokens()
    assert http.get(token_pacs.status_url, headers=bearer(access)).status_code == 401


def test_invalid_tokens_are_403(
    http: httpx.Client, token_pacs: Gateway, token_server: TokenServer
) -> None:
    access, refresh = user_tokens(http, token_server)
    with start_token_server() as other:
        foreign, _ = user_tokens(http, other)
    tampered = access[:-4] + ("AAAA" if not access.endswith("AAAA") else "BBBB")
    invalid = [foreign, tampered, refresh, token_server.issue_auth_token(), "not-a-jwt"]
    for token in invalid:
        response = http.get(token_pacs.status_url, headers=bearer(token))
        assert response.status_code == 403, token
        assert response.json()["message"].startswith("invalid access token")
    assert token_pacs.status_counts == {403: len(invalid)}


def test_oauth_client_token_and_static_token_are_accepted(
    http: httpx.Client, orthanc: OrthancServer, token_server: TokenServer, sample_study: SampleStudy
) -> None:
    static = "static-bearer-token-for-the-pacs"
    with start_token_gateway(orthanc.url, token_server, static_tokens=[static]) as pacs:
        for token in (client_token(http, token_server, scope="pacs.read"), static):
            response = http.get(f"{pacs.dicomweb_url}/studies", headers=bearer(token) | DICOM_JSON)
            assert sample_study.study_uid in study_uids(response)
        assert http.get(pacs.status_url, headers=bearer(static + "x")).status_code == 403
        assert pacs.outcomes == {"accepted": 2, "invalid": 1}


def test_audience_must_match_the_origin_or_the_gateway(
    http: httpx.Client, orthanc: OrthancServer, token_server: TokenServer
) -> None:
    origin = "https://viewer.example"
    exchanged = http.post(
        token_server.exchange_url,
        headers=bearer(token_server.issue_auth_token()) | {"Origin": origin},
    )
    for_origin = exchanged.headers["authorization"].removeprefix("Bearer ")
    for_pacs = client_token(http, token_server, audience="https://pacs.example")
    with start_token_gateway(orthanc.url, token_server, audience="https://pacs.example") as pacs:

        def status(token: str, **headers: str) -> int:
            return http.get(pacs.status_url, headers=bearer(token) | headers).status_code

        assert status(for_origin) == 403
        assert status(for_origin, Origin=origin) == 200
        assert status(for_pacs) == 200
    with start_token_gateway(orthanc.url, token_server) as pacs:
        assert http.get(pacs.status_url, headers=bearer(for_pacs)).status_code == 403


def test_orthanc_errors_and_bodies_pass_through(
    http: httpx.Client, token_pacs: Gateway, token_server: TokenServer
) -> None:
    access, _ = user_tokens(http, token_server)
    missing = http.get(
        f"{token_pacs.dicomweb_url}/studies/1.2.3.4/series/5.6.7", headers=bearer(access)
    )
    assert missing.status_code == 404
    posted = http.post(
        f"{token_pacs.url}/tools/find",
        json={"Level": "Study", "Query": {}},
        headers=bearer(access),
    )
    assert posted.status_code == 200 and isinstance(posted.json(), list) and posted.json()
    assert token_pacs.status_counts == {404: 1, 200: 1}


def test_server_entry_is_a_servers_json_entry_for_each_token_type(
    token_pacs: Gateway, token_server: TokenServer
) -> None:
    token_entry = token_pacs.server_entry("token")
    assert token_entry["uri"] == token_pacs.dicomweb_url
    assert token_entry["signInTokenServer"] == token_server.exchange_url
    assert token_entry["refreshServer"] == token_server.refresh_url
    assert token_server.tokens.open_auth_tokens == 1
    zhiva = token_pacs.server_entry("zhivaAuth", isDefault=False)
    assert (zhiva["login"], zhiva["password"]) == ("doctor", "s3cret")
    assert zhiva["signInServer"] == token_server.sign_in_url and zhiva["isDefault"] is False


def test_reject_next_answers_401_whatever_the_token(
    http: httpx.Client, token_pacs: Gateway, token_server: TokenServer
) -> None:
    access, _ = user_tokens(http, token_server)
    token_pacs.reject_next(2, status=401)
    statuses = [http.get(token_pacs.status_url, headers=bearer(access)).status_code for _ in "abc"]
    assert statuses == [401, 401, 200]
    assert token_pacs.outcomes == {"rejected": 2, "accepted": 1}
    assert token_pacs.requests == [("GET", "/dicom-web/studies", s) for s in statuses]


def test_fifty_concurrent_requests_pass_the_gateway(
    token_pacs: Gateway, token_server: TokenServer, sample_study: SampleStudy
) -> None:
    with http_client() as http:
        access, _ = user_tokens(http, token_server)
    url = f"{token_pacs.dicomweb_url}/studies/{sample_study.study_uid}/series"

    async def query_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(limits=limits, trust_env=False, timeout=60.0) as client:
            calls = [client.get(url, headers=bearer(access) | DICOM_JSON) for _ in range(50)]
            return await asyncio.gather(*calls)

    responses = asyncio.run(query_all())
    assert [len(response.json()) for response in responses] == [len(sample_study.series)] * 50
    assert token_pacs.status_counts == {200: 50}


def test_responses_stream_through_unbuffered(http: httpx.Client, token_server: TokenServer) -> None:
    # An upstream that sends its first part and then waits for the test: if the gateway
    # buffered whole responses, the first part would never arrive (read timeout).
    release = threading.Event()

    async def slow_multipart(request: Request) -> StreamingResponse:
        async def parts() -> AsyncIterator[bytes]:
            yield b"--b\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n"
            while not release.is_set():
                await asyncio.sleep(0.01)
            yield b"--b\r\nContent-Type: application/dicom\r\n\r\nsecond\r\n--b--\r\n"

        return StreamingResponse(parts(), media_type='multipart/related; boundary="b"')

    upstream = ThreadedServer(
        Starlette(routes=[Route("/dicom-web/{path:path}", slow_multipart)]), "slow upstream"
    )
    upstream.start()
    try:
        access, _ = user_tokens(http, token_server)
        with (
            start_token_gateway(upstream.url, token_server) as pacs,
            http.stream(
                "GET", f"{pacs.dicomweb_url}/studies/1.2/series/3.4", headers=bearer(access)
            ) as response,
        ):
            chunks = response.iter_raw()
            received = next(chunks)
            while b"first" not in received:
                received += next(chunks)
            assert b"second" not in received
            release.set()
            received += b"".join(chunks)
        assert received.endswith(b"second\r\n--b--\r\n")
    finally:
        release.set()
        upstream.stop()


def test_token_server_and_gateway_over_tls(
    orthanc: OrthancServer, tls_cert: TlsCert, sample_study: SampleStudy
) -> None:
    with (
        start_token_server(tls=tls_cert) as tokens,
        start_token_gateway(orthanc.url, tokens, tls=tls_cert) as pacs,
        http_client(verify=tls_cert.ssl_context()) as https,
    ):
        assert tokens.url.startswith("https://") and pacs.url.startswith("https://")
        signed_in = https.post(
            tokens.sign_in_url, json={"username": "doctor", "password": "s3cret"}
        )
        exchanged = https.post(tokens.exchange_url, headers=bearer(signed_in.json()["token"]))
        access = exchanged.headers["authorization"].removeprefix("Bearer ")
        found = https.get(f"{pacs.dicomweb_url}/studies", headers=bearer(access) | DICOM_JSON)
        assert sample_study.study_uid in study_uids(found)


def test_unreachable_orthanc_is_502_naming_it(
    http: httpx.Client, token_server: TokenServer
) -> None:
    access, _ = user_tokens(http, token_server)
    with start_token_gateway(closed_port_url(), token_server) as pacs:
        response = http.get(pacs.status_url, headers=bearer(access))
    assert response.status_code == 502
    assert response.json()["message"].startswith("gateway: Orthanc failed: ConnectError")
    assert pacs.requests == [("GET", "/dicom-web/studies", 502)]
