"""PACS tokens shared by three replicas through a real Redis, behind a real nginx
round-robin, against the real Orthanc behind the token gateway (docs/replicas.md,
"PACS tokens"): one exchange for three replicas started at once, one refresh for 60
requests over them, Redis down and back, the token file migrated, nothing in clear."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from auth_setup import ALL_LEVELS, STATUS_ON, expect_error
from harness import (
    LOOPBACK,
    ExampleModel,
    ProxyFactory,
    ProxyProcess,
    TlsCert,
    child_env,
    free_port,
    model_entry,
    model_proxy_argv,
    new_uid,
)
from redis_server import RedisServer, start_redis
from replica_set import NAMESPACE, REDIS_PASSWORD, ReplicaSet, assert_statuses, write_secrets
from token_calls import unverified, wait_past
from token_gateway import Gateway
from token_server import TokenServer

from model_proxy.pacs.auth.shared_tokens import SharedTokenStore
from model_proxy.pacs.auth.token_cipher import TokenCipher
from model_proxy.pacs.auth.tokens import StoredTokens, TokenStore
from model_proxy.sample_data import SampleStudy
from model_proxy.shared import RedisLink, RedisSettings

pytestmark = pytest.mark.integration


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with start_redis(tmp_path / "redis", password=REDIS_PASSWORD) as server:
        yield server


class Deployment:
    """servers.json with one ``token`` server, models.json with the example model."""

    def __init__(self, gateway: Gateway, model: ExampleModel, study: SampleStudy) -> None:
        self.server_id, self.model_id = new_uid(), new_uid()
        self.servers = {self.server_id: gateway.server_entry("token")}
        self.models = {
            self.model_id: model_entry(model, "/segmentation", "segmentation", ALL_LEVELS)
        }
        series = study.series[0]
        self.path = (
            f"/segmentations/{self.model_id}/studies/{study.study_uid}"
            f"/series/{series.series_uid}/instances/{series.sop_uids[0]}"
        )

    @property
    def record_key(self) -> str:
        return f"model-proxy:{NAMESPACE}:tokens:{self.server_id}"


@pytest.fixture
def deployment(
    token_pacs: Gateway, example_model: ExampleModel, sample_study: SampleStudy
) -> Deployment:
    return Deployment(token_pacs, example_model, sample_study)


@pytest.fixture
def replicas(
    start_proxy: ProxyFactory,
    tmp_path: Path,
    redis: RedisServer,
    deployment: Deployment,
    tls_cert: TlsCert,
) -> Iterator[ReplicaSet]:
    running = ReplicaSet.start(
        start_proxy, tmp_path, redis, deployment.servers, deployment.models, cert=tls_cert
    )
    yield running
    running.stop()


def stored_record(redis: RedisServer, key_file: Path, key: str) -> tuple[bytes, dict[str, Any]]:
    """The raw value of ``key`` and its decrypted record."""
    with redis.client() as plain:
        value = plain.get(key)
    assert isinstance(value, bytes), f"no {key} in Redis"
    record: dict[str, Any] = json.loads(TokenCipher.from_file(key_file).decrypt(value, key))
    return value, record


def json_status(proxy: ProxyProcess) -> dict[str, Any]:
    with proxy.client() as client:
        response = client.get("/status", headers={"Accept": "application/json"})
    assert response.status_code == 200, response.text
    report: dict[str, Any] = response.json()
    return report


def metric(proxy: ProxyProcess, name: str) -> float:
    with proxy.client() as client:
        text = client.get("/metrics").text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


def test_three_replicas_started_at_once_exchange_the_auth_token_once(
    replicas: ReplicaSet,
    deployment: Deployment,
    token_server: TokenServer,
    token_pacs: Gateway,
    redis: RedisServer,
    tmp_path: Path,
) -> None:
    # A slow exchange: every replica needs a token while the first one is exchanging.
    token_server.set_delay(1.0, endpoint="exchange")
    responses = replicas.get_concurrently(deployment.path, 30)
    assert_statuses(responses, 200)
    assert token_server.calls["exchange"] == 1
    assert token_server.calls["refresh"] == 0
    assert all(count > 0 for count in replicas.served_by_each(deployment.path))

    # In Redis encrypted: neither token appears in the value a plain client reads.
    value, record = stored_record(redis, tmp_path / "secrets" / "token-key", deployment.record_key)
    assert record["accessToken"] in token_pacs.seen_tokens
    assert record["refreshToken"] and len(record["exchangedAuthTokens"]) == 1
    for secret in (record["accessToken"], record["refreshToken"]):
        assert secret.encode() not in value
    assert b"accessToken" not in value
    with redis.client() as plain:
        keys = {key.decode() for key in plain.keys("*")}
    # Of the tokens, the record, its lock and its fence are all there is; the other keys
    # belong to what else the replicas share (results, jobs, the prefetch watcher).
    namespace = deployment.record_key.split(":tokens:")[0]
    assert {key for key in keys if key.startswith(namespace + ":tokens:")} <= {
        deployment.record_key,
        deployment.record_key + ":lock",
        deployment.record_key + ":fence",
    }
    others = ("tokens", "results", "jobs", "prefetch")
    assert all(key.split(":")[2] in others for key in keys), keys

    for replica in replicas.replicas:
        assert json_status(replica)["redis"]["reachable"] is True
        assert metric(replica, "model_proxy_redis_up") == 1.0
        assert REDIS_PASSWORD not in replica.log_text()


def test_access_expiry_under_sixty_requests_over_the_replicas_refreshes_once(
    replicas: ReplicaSet,
    deployment: Deployment,
    token_server: TokenServer,
    redis: RedisServer,
    tmp_path: Path,
) -> None:
    assert_statuses(replicas.get_concurrently(deployment.path, 6), 200)
    assert token_server.calls["exchange"] == 1

    # Revoked early: every replica is refused by the PACS (401) with the token it holds;
    # a slow token server lets the requests of all three pile up behind one refresh.
    token_server.expire_access_tokens()
    token_server.set_delay(0.5, endpoint="refresh")
    assert_statuses(replicas.get_concurrently(deployment.path, 60), 200)
    assert token_server.calls["refresh"] == 1

    # Expiry by the JWT's exp: a short-lived token, then 60 requests once it is past.
    token_server.set_delay(0.0, endpoint="refresh")
    token_server.set_lifetimes(access=3.0)
    token_server.expire_access_tokens()
    with replicas.balanced() as client:
        assert client.get(deployment.path).status_code == 200  # one replica refreshes
    assert token_server.calls["refresh"] == 2
    _, record = stored_record(redis, tmp_path / "secrets" / "token-key", deployment.record_key)
    wait_past(unverified(record["accessToken"])["exp"])
    token_server.set_lifetimes(access=3600.0)
    token_server.set_delay(0.5, endpoint="refresh")
    assert_statuses(replicas.get_concurrently(deployment.path, 60), 200)
    assert token_server.calls["refresh"] == 3
    assert token_server.calls["exchange"] == 1


def test_redis_down_valid_tokens_serve_an_exchange_is_refused_then_recovery(
    replicas: ReplicaSet,
    deployment: Deployment,
    token_server: TokenServer,
    redis: RedisServer,
    start_proxy: ProxyFactory,
    tmp_path: Path,
) -> None:
    assert_statuses(replicas.get_concurrently(deployment.path, 6), 200)
    redis.stop()

    # The access tokens the replicas hold are valid: requests need no Redis.
    assert_statuses(replicas.get_concurrently(deployment.path, 9), 200)
    status = json_status(replicas.replicas[0])["redis"]
    assert status["reachable"] is False and status["lastError"]["message"]
    assert status["url"] == redis.url
    assert metric(replicas.replicas[0], "model_proxy_redis_up") == 0.0
    with replicas.replicas[0].client() as client:
        page = client.get("/status", headers={"Accept": "text/html"}).text
    assert '<p id="redis"><span class="badge down">' in page
    assert metric(replicas.replicas[0], "model_proxy_redis_command_failures_total") >= 1

    # A replica with no token must not exchange without the lock: a clear 503.
    fourth = replicas.start_another(start_proxy, tmp_path / "fourth")
    with fourth.client() as client:
        refused = client.get(deployment.path)
    message = expect_error(refused, 503, "redis_unavailable")
    assert "Redis" in message and redis.url in message
    assert refused.headers["retry-after"]
    assert token_server.calls["exchange"] == 1
    # Nor refresh without it: the token refused by the PACS stays refused, clearly.
    token_server.expire_access_tokens()
    with replicas.balanced() as client:
        expect_error(client.get(deployment.path), 503, "redis_unavailable")
    assert token_server.calls["refresh"] == 0

    # Redis back, empty (no persistence): a replica writes back the tokens it holds
    # when it next renews; the new replica then reads them, still one exchange.
    redis.start()
    assert_statuses(replicas.get_concurrently(deployment.path, 9), 200)
    assert token_server.calls["refresh"] == 1
    with fourth.client() as client:
        assert client.get(deployment.path).status_code == 200
    assert token_server.calls["exchange"] == 1
    assert json_status(fourth)["redis"]["reachable"] is True
    assert metric(replicas.replicas[0], "model_proxy_redis_up") == 1.0
    log = "\n".join(replica.log_text() for replica in [*replicas.replicas, fourth])
    assert "writing back the ones this replica holds" in log
    assert REDIS_PASSWORD not in log


def test_a_token_file_is_migrated_into_redis_once(
    start_proxy: ProxyFactory,
    deployment: Deployment,
    token_server: TokenServer,
    redis: RedisServer,
    tmp_path: Path,
) -> None:
    # A single proxy of before --redis: its tokens in its token file.
    single = start_proxy(deployment.servers, deployment.models, env=STATUS_ON, tls=False)
    with single.client() as client:
        assert client.get(deployment.path).status_code == 200
    single.stop()
    token_file = single.data_dir / "tokens" / f"{deployment.server_id}.json"
    before = json.loads(token_file.read_text())

    password, key = write_secrets(tmp_path / "secrets")
    args = [
        "--redis", redis.url,
        "--redis-password-file", str(password),
        "--redis-key-file", str(key),
        "--redis-namespace", NAMESPACE,
    ]  # fmt: skip
    migrated = start_proxy(
        None, None, env=STATUS_ON, tls=False, config_dir=single.config_dir, extra_args=args
    )
    with migrated.client() as client:
        assert client.get(deployment.path).status_code == 200
    assert not token_file.exists()
    assert token_file.with_name(token_file.name + ".migrated-to-redis").exists()
    assert "migrated the token file" in migrated.log_text()
    _, record = stored_record(redis, key, deployment.record_key)
    assert record["accessToken"] == before["accessToken"]
    assert record["exchangedAuthTokens"] == before["exchangedAuthTokens"]

    # Another replica, with its own empty data folder, uses the migrated tokens.
    other = start_proxy(deployment.servers, deployment.models, env=STATUS_ON, tls=False,
                        extra_args=args)  # fmt: skip
    with other.client() as client:
        assert client.get(deployment.path).status_code == 200
    assert token_server.calls["exchange"] == 1 and token_server.calls["refresh"] == 0


def test_a_lock_holder_whose_lease_ran_out_cannot_overwrite_a_newer_record(
    redis: RedisServer, tmp_path: Path
) -> None:
    _, key = write_secrets(tmp_path / "secrets")
    password_file = tmp_path / "secrets" / "redis-password"
    settings = RedisSettings(url=redis.url, password_file=password_file, namespace=NAMESPACE)
    server_id = new_uid()
    older = StoredTokens("token", "c", access_token="older", refresh_token="r1")
    newer = StoredTokens("token", "c", access_token="newer", refresh_token="r2")

    async def run() -> StoredTokens:
        link = RedisLink.connect(settings)
        store = SharedTokenStore(
            link, TokenCipher.from_file(key), TokenStore(tmp_path / "tokens"), lease=0.3, wait=10
        )
        lock_key = store.keys(server_id).lock
        try:
            async with store.renewing(server_id, "PACS test") as first:
                # Its lease runs out (a stalled replica); another replica takes the lock.
                deadline = time.monotonic() + 30
                while await link.client.exists(lock_key):
                    assert time.monotonic() < deadline, "the lease never ran out"
                    await asyncio.sleep(0.02)
                async with store.renewing(server_id, "PACS test") as second:
                    assert second.fence > first.fence
                    await second.save(newer)
                await first.save(older)  # refused: the fence moved on
            return await store.load(server_id, "PACS test")
        finally:
            await link.aclose()

    assert asyncio.run(run()) == newer


def test_redis_without_a_key_file_refuses_to_start_with_a_token_server(
    deployment: Deployment, redis: RedisServer, tmp_path: Path
) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "servers.json").write_text(json.dumps(deployment.servers))
    (config / "models.json").write_text(json.dumps(deployment.models))
    short_key = tmp_path / "short-key"
    short_key.write_text("too-short\n")
    base = [*model_proxy_argv(), "serve", "--config-dir", str(config), "--no-tls"]
    base += ["--host", LOOPBACK, "--port", str(free_port()), "--redis", redis.url]
    for extra, expected in (
        ([], "give --redis-key-file"),
        (["--redis-key-file", str(short_key)], "holds 9 characters; at least 32 are needed"),
    ):
        done = _run(base + extra, config, {"MODEL_PROXY_DATA_DIR": str(tmp_path / "data")})
        assert done.returncode == 2, done.stdout + done.stderr
        assert expected in done.stderr
        assert "too-short" not in done.stdout + done.stderr


def _run(argv: list[str], cwd: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env={**child_env(), **env}, capture_output=True, text=True, timeout=60
    )
