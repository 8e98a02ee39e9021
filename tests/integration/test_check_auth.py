"""``model-proxy check-auth`` against the live token server and token-protected Orthanc,
and the end-to-end guarantee that no secret of any auth type reaches a log, an answer
or /status."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from auth_setup import ALL_LEVELS, STATUS_ON, assert_no_secret, assert_segmentation, use_up
from check_auth_cli import check_auth, step_lines, write_config
from harness import (
    ExampleModel,
    OrthancServer,
    ProxyFactory,
    model_entry,
    new_uid,
)
from token_gateway import Gateway, start_token_gateway
from token_server import TokenServer

from model_proxy.sample_data import SampleStudy


def test_token_check_never_burns_the_auth_token(
    tmp_path: Path,
    start_proxy: ProxyFactory,
    example_model: ExampleModel,
    sample_study: SampleStudy,
    token_pacs: Gateway,
    token_server: TokenServer,
) -> None:
    server_id, model_id = new_uid(), new_uid()
    entry = token_pacs.server_entry("token")
    models = {model_id: model_entry(example_model, "/segmentation", "segmentation", ALL_LEVELS)}
    config = write_config(tmp_path / "proxy", {server_id: entry}, models)

    first = check_auth(config)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.startswith(f"PACS {server_id} (token) {token_pacs.dicomweb_url}\n")
    steps = step_lines(first.stdout)
    assert steps["stored tokens"].startswith("none")
    assert steps["token exchange"].startswith("OK") and "refresh token received" in first.stdout
    assert steps["refresh"].startswith("OK      access token valid until")
    assert steps["PACS request"].startswith("OK") and "answered 200" in steps["PACS request"]

    second = check_auth(config, "--server", server_id)
    assert second.returncode == 0, second.stdout + second.stderr
    steps = step_lines(second.stdout)
    assert steps["stored tokens"].startswith("OK")
    assert steps["token exchange"].startswith("skipped this authToken was exchanged before")
    assert steps["refresh"].startswith("OK") and steps["PACS request"].startswith("OK")
    assert token_server.calls["exchange"] == 1 and token_server.calls["refresh"] == 2

    # The proxy on the same data folder uses what check-auth stored.
    proxy = start_proxy(None, None, config_dir=config, data_dir=config / "data")
    series = sample_study.series[0]
    path = f"/segmentations/{model_id}/studies/{sample_study.study_uid}/series/{series.series_uid}"
    with proxy.client() as client:
        assert_segmentation(client.get(f"{path}/instances/{series.sop_uids[0]}"), sample_study)
    assert token_server.calls["exchange"] == 1
    assert_no_secret([first.stdout, second.stdout, first.stderr], [entry["authToken"]])


def test_zhiva_and_oauth2_checks_and_failures(
    tmp_path: Path, token_pacs: Gateway, token_server: TokenServer
) -> None:
    good, wrong, oauth2 = new_uid(), new_uid(), new_uid()
    servers = {
        good: token_pacs.server_entry("zhivaAuth"),
        wrong: token_pacs.server_entry("zhivaAuth", password="wr0ng-pa55word", isDefault=False),
        oauth2: token_pacs.server_entry(
            "oauth2",
            tokenUrl=token_server.oauth_token_url,
            clientId="proxy",
            clientSecret="client-secret",
            isDefault=False,
        ),
    }
    config = write_config(tmp_path / "proxy", servers, {})

    done = check_auth(config, "--server", good)
    assert done.returncode == 0, done.stdout + done.stderr
    steps = step_lines(done.stdout)
    assert steps["sign-in"] == "OK      auth token received"
    assert [steps[name][:2] for name in ("token exchange", "refresh", "PACS request")] == ["OK"] * 3

    done = check_auth(config, "--server", oauth2)
    assert done.returncode == 0, done.stdout + done.stderr
    steps = step_lines(done.stdout)
    assert steps["OAuth2 token request"].startswith("OK      access token valid until")
    assert steps["PACS request"].startswith("OK")

    done = check_auth(config)  # all three: one fails, so exit 1
    assert done.returncode == 1
    assert done.stdout.count("\nPACS ") + done.stdout.startswith("PACS ") == 3
    wrong_block = done.stdout.split(f"PACS {wrong}")[1].split("\nPACS ")[0]
    assert "sign-in               FAILED  sign-in rejected (401)" in wrong_block
    assert 'check "login" and "password"' in wrong_block
    assert "PACS request          skipped no access token to try" in wrong_block
    assert_no_secret([done.stdout, done.stderr], ["wr0ng-pa55word", "s3cret", "client-secret"])

    unknown = check_auth(config, "--server", "nope")
    assert unknown.returncode == 2 and "'nope' is not in servers.json" in unknown.stderr


def test_no_secret_reaches_logs_answers_or_status(
    tmp_path_factory: pytest.TempPathFactory,
    start_proxy: ProxyFactory,
    example_model: ExampleModel,
    sample_study: SampleStudy,
    orthanc: OrthancServer,
    token_server: TokenServer,
) -> None:
    used_token = token_server.issue_auth_token()
    use_up(token_server, used_token)
    with start_token_gateway(orthanc.url, token_server, static_tokens=["st4tic-t0ken"]) as pacs:
        ids = {name: new_uid() for name in ("token", "zhiva", "oauth2", "bearer", "wrong", "used")}
        servers = {
            ids["token"]: pacs.server_entry("token"),
            ids["zhiva"]: pacs.server_entry("zhivaAuth", isDefault=False),
            ids["oauth2"]: pacs.server_entry(
                "oauth2",
                tokenUrl=token_server.oauth_token_url,
                clientId="proxy",
                clientSecret={"env": "TEST_CLIENT_SECRET"},
                isDefault=False,
            ),
            ids["bearer"]: pacs.server_entry("bearer", authToken="st4tic-t0ken", isDefault=False),
            ids["wrong"]: pacs.server_entry(
                "zhivaAuth", password="wr0ng-pa55word", isDefault=False
            ),
            ids["used"]: pacs.server_entry("token", authToken=used_token, isDefault=False),
        }
        model_id = new_uid()
        models = {model_id: model_entry(example_model, "/segmentation", "segmentation", ALL_LEVELS)}
        proxy = start_proxy(
            servers, models, env={**STATUS_ON, "TEST_CLIENT_SECRET": "client-secret"}
        )
        series = sample_study.series[0]
        path = (
            f"/segmentations/{model_id}/studies/{sample_study.study_uid}"
            f"/series/{series.series_uid}/instances/{series.sop_uids[0]}"
        )
        answers: list[str] = []
        with proxy.client() as client:
            for _round in range(2):
                for name, server_id in ids.items():
                    response = client.get(path, params={"server": server_id})
                    answers.append(response.text)
                    ok = name not in ("wrong", "used")
                    assert (response.status_code == 200) is ok, (name, response.text)
                token_server.expire_access_tokens()  # round 2 refreshes after a 401
            for accept in ("application/json", "text/html"):
                answers.append(client.get("/status", headers={"Accept": accept}).text)
        proxy.stop()
        stored = [
            json.loads(path.read_text()) for path in (proxy.data_dir / "tokens").glob("*.json")
        ]
        tokens = [t[key] for t in stored for key in ("accessToken", "refreshToken") if t[key]]
        secrets = [
            "s3cret",  # the zhivaAuth password
            "wr0ng-pa55word",
            "client-secret",
            "st4tic-t0ken",
            used_token,
            servers[ids["token"]]["authToken"],
            *tokens,
            *pacs.seen_tokens,  # every access token the proxy presented
        ]
    assert len(tokens) >= 4 and len(pacs.seen_tokens) >= 5
    assert_no_secret([proxy.log_text(), *answers], secrets)
