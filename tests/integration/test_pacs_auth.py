"""Every auth type end to end: the proxy gets tokens from the real token server double and
the example model's result comes back through a token-protected Orthanc. Tokens survive
expiry (one refresh for 50 concurrent requests) and restarts (no second exchange)."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import time

import httpx
import pytest
from auth_setup import AuthSetup, AuthSetupFactory, assert_segmentation
from harness import OrthancServer
from token_gateway import Gateway, start_token_gateway
from token_server import TokenServer

from model_proxy.sample_data import SampleStudy


def test_token(
    auth_setup: AuthSetupFactory,
    sample_study: SampleStudy,
    token_pacs: Gateway,
    token_server: TokenServer,
) -> None:
    entry = token_pacs.server_entry("token")
    setup = auth_setup(entry)
    assert_segmentation(setup.infer(setup.series_path), sample_study)
    assert_segmentation(setup.infer(), sample_study)
    assert token_server.calls["exchange"] == 1 and token_server.calls["refresh"] == 0
    assert token_server.origins == []  # contract 7.5: no Origin to the token server
    assert token_pacs.outcomes["accepted"] >= 2 and token_pacs.status_counts[401] == 0
    # The tokens are on disk, private, and the auth token itself is not.
    stored = setup.stored()
    assert token_server.verify_access(stored["accessToken"])["username"] == "doctor"
    assert stored["refreshToken"] and len(stored["exchangedAuthTokens"]) == 1
    assert entry["authToken"] not in setup.token_file.read_text()
    assert stat.S_IMODE(setup.token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(setup.token_file.parent.stat().st_mode) == 0o700
    assert setup.status()["ok"] is True


def test_zhiva_auth(
    auth_setup: AuthSetupFactory,
    sample_study: SampleStudy,
    token_pacs: Gateway,
    token_server: TokenServer,
) -> None:
    setup = auth_setup(token_pacs.server_entry("zhivaAuth"))
    assert_segmentation(setup.infer(), sample_study)
    assert_segmentation(setup.infer(), sample_study)
    assert token_server.calls["sign_in"] == 1 and token_server.calls["exchange"] == 1
    assert token_server.origins == []
    assert setup.stored()["authType"] == "zhivaAuth"


def test_oauth2_with_secret_references(
    auth_setup: AuthSetupFactory,
    sample_study: SampleStudy,
    orthanc: OrthancServer,
    token_server: TokenServer,
) -> None:
    # The PACS checks the audience the proxy asked for.
    with start_token_gateway(orthanc.url, token_server, audience="https://pacs.test") as pacs:
        for method, client_auth in (
            ("client_secret_basic", "basic"),
            ("client_secret_post", "form"),
        ):
            token_server.reset_counters()
            entry = pacs.server_entry(
                "oauth2",
                tokenUrl=token_server.oauth_token_url,
                clientId="proxy",
                clientSecret={"env": "TEST_CLIENT_SECRET"},
                clientAuthMethod=method,
                scope="dicom.read",
                audience="https://pacs.test",
            )
            setup = auth_setup(entry, env={"TEST_CLIENT_SECRET": "client-secret"})
            assert_segmentation(setup.infer(), sample_study)
            assert_segmentation(setup.infer(), sample_study)
            assert token_server.oauth_grants == [
                {
                    "client_id": "proxy",
                    "scope": "dicom.read",
                    "audience": "https://pacs.test",
                    "client_auth": client_auth,
                }
            ]
            assert not setup.token_file.exists()  # OAuth2 tokens stay in memory


def test_bearer_from_a_secret_file(
    auth_setup: AuthSetupFactory,
    sample_study: SampleStudy,
    orthanc: OrthancServer,
    token_server: TokenServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    secret_file = tmp_path_factory.mktemp("secrets") / "pacs_token"
    secret_file.write_text("st4tic-bearer-t0ken\n")
    with start_token_gateway(
        orthanc.url, token_server, static_tokens=["st4tic-bearer-t0ken"]
    ) as pacs:
        entry = pacs.server_entry("bearer", authToken={"file": str(secret_file)})
        setup = auth_setup(entry)
        assert_segmentation(setup.infer(), sample_study)
        assert set(pacs.seen_tokens) == {"st4tic-bearer-t0ken"}
    assert sum(token_server.calls.values()) == 0


def test_expiry_mid_traffic_causes_one_refresh(
    auth_setup: AuthSetupFactory,
    sample_study: SampleStudy,
    token_pacs: Gateway,
    token_server: TokenServer,
) -> None:
    setup = auth_setup(token_pacs.server_entry("token"))
    assert_segmentation(setup.infer(), sample_study)
    # Revoked early: the proxy still believes in its token, the PACS answers 401;
    # a slow token server lets all 50 requests pile up behind the one refresh.
    token_server.expire_access_tokens()
    token_server.set_delay(0.5)
    responses = asyncio.run(_concurrently(setup, 50))
    assert [r.status_code for r in responses] == [200] * 50, responses[0].text
    assert token_server.calls["refresh"] == 1
    assert token_server.calls["exchange"] == 1 and token_server.calls["sign_in"] == 0

    # Expiry by the JWT's exp: renewed before the PACS would refuse it, again once.
    token_server.set_delay(0.0)
    token_server.set_lifetimes(access=3.0)
    token_server.expire_access_tokens()
    token_pacs.reset_counters()
    assert_segmentation(setup.infer(), sample_study)  # refused once more: a 3 s token
    assert token_server.calls["refresh"] == 2
    time.sleep(4.0)  # past the token's exp, which the token server rounds up to a second
    token_server.set_lifetimes(access=3600.0)
    token_server.set_delay(0.5)
    responses = asyncio.run(_concurrently(setup, 50))
    assert [r.status_code for r in responses] == [200] * 50
    assert token_server.calls["refresh"] == 3
    assert token_pacs.status_counts[401] == 1  # only the revoked one, never the expired one


async def _concurrently(setup: AuthSetup, count: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=count)
    async with setup.proxy.async_client(limits=limits) as client:
        return await asyncio.gather(*(client.get(setup.instance_path) for _ in range(count)))


def test_restarts_reuse_the_stored_tokens(
    auth_setup: AuthSetupFactory,
    sample_study: SampleStudy,
    token_pacs: Gateway,
    token_server: TokenServer,
) -> None:
    entry = token_pacs.server_entry("token")
    setup = auth_setup(entry)
    assert_segmentation(setup.infer(), sample_study)
    setup.proxy.restart()
    assert_segmentation(setup.infer(), sample_study)
    assert token_server.calls["exchange"] == 1 and token_server.calls["refresh"] == 0

    # Expired while the proxy was down: a refresh, still no second exchange.
    token_server.expire_access_tokens()
    setup.proxy.restart()
    assert_segmentation(setup.infer(), sample_study)
    assert token_server.calls["exchange"] == 1 and token_server.calls["refresh"] == 1

    # A new authToken in servers.json is exchanged, once.
    servers_json = setup.proxy.config_dir / "servers.json"
    servers_json.write_text(
        servers_json.read_text().replace(entry["authToken"], token_server.issue_auth_token())
    )
    setup.proxy.restart()
    assert_segmentation(setup.infer(), sample_study)
    setup.proxy.restart()
    assert_segmentation(setup.infer(), sample_study)
    assert token_server.calls["exchange"] == 2
    assert len(setup.stored()["exchangedAuthTokens"]) == 2


def test_corrupt_token_file_is_reported_not_fatal(
    auth_setup: AuthSetupFactory,
    sample_study: SampleStudy,
    token_pacs: Gateway,
    token_server: TokenServer,
) -> None:
    setup = auth_setup(token_pacs.server_entry("zhivaAuth"))
    assert_segmentation(setup.infer(), sample_study)
    setup.proxy.stop()
    setup.token_file.write_text('{"format": 1, "accessToken": ')  # a torn write
    setup.proxy.restart()
    assert_segmentation(setup.infer(), sample_study)  # signed in again
    assert token_server.calls["sign_in"] == 2
    assert "is corrupt" in setup.proxy.log_text()
    assert setup.stored()["format"] == 1  # replaced by a good file


def test_config_reloads_keep_the_tokens(
    auth_setup: AuthSetupFactory,
    sample_study: SampleStudy,
    token_pacs: Gateway,
    token_server: TokenServer,
) -> None:
    entry = token_pacs.server_entry("token")
    setup = auth_setup(entry)
    assert_segmentation(setup.infer(), sample_study)
    reload_config(setup, 1)  # the rebuilt token session starts from the token file
    assert_segmentation(setup.infer(setup.series_path), sample_study)
    assert token_server.calls["exchange"] == 1
    # A new authToken put in force by a reload is exchanged, once.
    servers_json = setup.proxy.config_dir / "servers.json"
    servers_json.write_text(
        servers_json.read_text().replace(entry["authToken"], token_server.issue_auth_token())
    )
    reload_config(setup, 2)
    assert_segmentation(setup.infer(setup.series_path), sample_study)
    reload_config(setup, 3)
    assert_segmentation(setup.infer(), sample_study)
    assert token_server.calls["exchange"] == 2 and token_server.calls["refresh"] == 0


def reload_config(setup: AuthSetup, count: int) -> None:
    """SIGHUP, then wait for the ``count``-th reload to be in force."""
    assert setup.proxy.process.pid is not None
    os.kill(setup.proxy.process.pid, signal.SIGHUP)
    deadline = time.monotonic() + 15
    while setup.proxy.log_text().count("config reloaded:") < count:
        assert time.monotonic() < deadline, "the config was not reloaded"
        time.sleep(0.1)
