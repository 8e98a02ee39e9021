"""``model-proxy check-auth --redis``: the PACS tokens the replicas share, checked through
the same record, lock and fence as the replicas (docs/replicas.md, "PACS tokens"),
against a real Redis, real replicas, the token server and the token-checking gateway in
front of Orthanc. The single-use auth token is exchanged once per deployment, whoever
comes first: a replica or check-auth."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from auth_setup import ALL_LEVELS, assert_no_secret
from check_auth_cli import check_auth, step_lines, write_config
from harness import (
    LOOPBACK,
    ExampleModel,
    ProxyFactory,
    ProxyProcess,
    child_env,
    free_port,
    model_entry,
    model_proxy_argv,
    new_uid,
)
from redis import Redis
from redis_server import RedisServer, start_redis
from replica_set import NAMESPACE, REDIS_PASSWORD, write_secrets
from token_gateway import Gateway
from token_server import TokenServer

from model_proxy.pacs.auth.token_cipher import TokenCipher
from model_proxy.sample_data import SampleStudy


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with start_redis(tmp_path / "redis", password=REDIS_PASSWORD) as server:
        yield server


@dataclass
class SharedDeployment:
    """One ``token`` server and the example model; the --redis flags every replica and
    check-auth get (the same Redis, password, key file and namespace)."""

    server_id: str
    servers: dict[str, Any]
    models: dict[str, Any]
    path: str
    key_file: Path
    redis_args: list[str]

    @property
    def record_key(self) -> str:
        return f"model-proxy:{NAMESPACE}:tokens:{self.server_id}"

    def start_replica(self, start_proxy: ProxyFactory, folder: Path) -> ProxyProcess:
        return start_proxy(
            self.servers, self.models, tls=False, config_dir=folder, extra_args=self.redis_args
        )

    def check_auth(self, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
        """check-auth with the deployment's --redis flags, from its own folder (an
        administrator's copy of servers.json, an empty data folder)."""
        write_config(folder, self.servers, self.models)
        return check_auth(folder, *self.redis_args, *args)

    def record(self, redis: RedisServer) -> dict[str, Any]:
        """The server's token record in Redis, decrypted."""
        with redis.client() as plain:
            value = plain.get(self.record_key)
        assert isinstance(value, bytes), f"no {self.record_key} in Redis"
        cipher = TokenCipher.from_file(self.key_file)
        record: dict[str, Any] = json.loads(cipher.decrypt(value, self.record_key))
        return record


@pytest.fixture
def shared(
    tmp_path: Path,
    redis: RedisServer,
    token_pacs: Gateway,
    example_model: ExampleModel,
    sample_study: SampleStudy,
) -> SharedDeployment:
    password, key = write_secrets(tmp_path / "secrets")
    redis_args = [
        "--redis", redis.url,
        "--redis-password-file", str(password),
        "--redis-key-file", str(key),
        "--redis-namespace", NAMESPACE,
    ]  # fmt: skip
    server_id, model_id = new_uid(), new_uid()
    series = sample_study.series[0]
    return SharedDeployment(
        server_id=server_id,
        servers={server_id: token_pacs.server_entry("token")},
        models={model_id: model_entry(example_model, "/segmentation", "segmentation", ALL_LEVELS)},
        path=(
            f"/segmentations/{model_id}/studies/{sample_study.study_uid}"
            f"/series/{series.series_uid}/instances/{series.sop_uids[0]}"
        ),
        key_file=key,
        redis_args=redis_args,
    )


def no_token_files(data_dir: Path) -> bool:
    """With --redis nothing is written to the token files."""
    return not list((data_dir / "tokens").glob("*.json*"))


def test_check_auth_uses_the_tokens_a_replica_exchanged(
    shared: SharedDeployment,
    start_proxy: ProxyFactory,
    token_server: TokenServer,
    redis: RedisServer,
    tmp_path: Path,
) -> None:
    replica = shared.start_replica(start_proxy, tmp_path / "replica-1")
    with replica.client() as client:
        assert client.get(shared.path).status_code == 200
    assert token_server.calls["exchange"] == 1
    before = shared.record(redis)

    done = shared.check_auth(tmp_path / "admin")
    assert done.returncode == 0, done.stdout + done.stderr
    steps = step_lines(done.stdout)
    assert steps["stored tokens"].startswith("OK      access token valid until")
    assert f"(Redis {shared.record_key})" in steps["stored tokens"]
    assert steps["token exchange"].startswith("skipped this authToken was exchanged before")
    assert steps["refresh"].startswith("OK      access token valid until")
    assert steps["PACS request"].startswith("OK") and "answered 200" in steps["PACS request"]
    assert token_server.calls["exchange"] == 1 and token_server.calls["refresh"] == 1

    # The refreshed access token went into the shared record, fenced; no token file.
    after = shared.record(redis)
    assert after["accessToken"] != before["accessToken"]
    assert after["refreshToken"] == before["refreshToken"]
    assert after["exchangedAuthTokens"] == before["exchangedAuthTokens"]
    assert no_token_files(tmp_path / "admin" / "data")

    # The replica goes on serving; a replica started now uses the record as it is.
    with replica.client() as client:
        assert client.get(shared.path).status_code == 200
    later = shared.start_replica(start_proxy, tmp_path / "replica-2")
    with later.client() as client:
        assert client.get(shared.path).status_code == 200
    assert token_server.calls["exchange"] == 1 and token_server.calls["refresh"] == 1
    secrets = [shared.servers[shared.server_id]["authToken"], REDIS_PASSWORD]
    secrets += [after["accessToken"], after["refreshToken"]]
    assert_no_secret([done.stdout, done.stderr], secrets)


def test_check_auth_first_exchanges_once_and_replicas_use_its_tokens(
    shared: SharedDeployment,
    start_proxy: ProxyFactory,
    token_server: TokenServer,
    redis: RedisServer,
    tmp_path: Path,
) -> None:
    done = shared.check_auth(tmp_path / "admin")
    assert done.returncode == 0, done.stdout + done.stderr
    steps = step_lines(done.stdout)
    assert steps["stored tokens"] == f"none    none in Redis {shared.record_key}"
    assert steps["token exchange"].startswith("OK      access token valid until")
    assert "refresh token received" in steps["token exchange"]
    assert steps["refresh"].startswith("OK") and steps["PACS request"].startswith("OK")
    assert token_server.calls["exchange"] == 1
    assert len(shared.record(redis)["exchangedAuthTokens"]) == 1
    assert no_token_files(tmp_path / "admin" / "data")

    replica = shared.start_replica(start_proxy, tmp_path / "replica-1")
    with replica.client() as client:
        assert client.get(shared.path).status_code == 200
    assert token_server.calls["exchange"] == 1 and token_server.calls["refresh"] == 1

    again = shared.check_auth(tmp_path / "admin")
    assert again.returncode == 0, again.stdout + again.stderr
    steps = step_lines(again.stdout)
    assert steps["token exchange"].startswith("skipped this authToken was exchanged before")
    assert token_server.calls["exchange"] == 1


def test_check_auth_waiting_for_a_replicas_exchange_uses_its_result(
    shared: SharedDeployment,
    start_proxy: ProxyFactory,
    token_server: TokenServer,
    redis: RedisServer,
    tmp_path: Path,
) -> None:
    replica = shared.start_replica(start_proxy, tmp_path / "replica-1")
    exchange = token_server.hold("exchange")
    with ThreadPoolExecutor(2) as pool, replica.client() as client:
        try:
            # The replica holds the lock, its exchange in flight at the token server.
            request = pool.submit(client.get, shared.path)
            wait_until("the replica's exchange", lambda: token_server.calls["exchange"] == 1)
            with redis.client() as plain:
                before = {entry["id"] for entry in plain.client_list()}
                # check-auth has read the record (no exchange yet) and waits for the lock.
                check = pool.submit(shared.check_auth, tmp_path / "admin")
                wait_until("check-auth waiting for the lock", lambda: lock_waiter(plain, before))
        finally:
            exchange.set()
        assert request.result().status_code == 200
        done = check.result()
    assert done.returncode == 0, done.stdout + done.stderr
    steps = step_lines(done.stdout)
    assert steps["stored tokens"].startswith("none")
    assert steps["token exchange"].startswith("skipped another replica exchanged this authToken")
    assert steps["refresh"].startswith("OK") and steps["PACS request"].startswith("OK")
    assert token_server.calls["exchange"] == 1


def lock_waiter(plain: Redis, before: set[str]) -> bool:
    """A Redis client that came after ``before`` and is trying SET NX (a Lock waiting)."""
    return any(entry["id"] not in before and entry["cmd"] == "set" for entry in plain.client_list())


def wait_until(what: str, done: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.05)


def test_check_auth_with_another_key_fails_and_leaves_the_record(
    shared: SharedDeployment, token_server: TokenServer, redis: RedisServer, tmp_path: Path
) -> None:
    assert shared.check_auth(tmp_path / "admin").returncode == 0
    record = shared.record(redis)
    other_key = tmp_path / "other-key"
    other_key.write_text("another-secret-of-another-deployment-0123456789\n")
    args = [arg if arg != str(shared.key_file) else str(other_key) for arg in shared.redis_args]
    folder = write_config(tmp_path / "other", shared.servers, shared.models)
    done = check_auth(folder, *args)
    assert done.returncode == 1, done.stdout + done.stderr
    steps = step_lines(done.stdout)
    assert steps["shared tokens"].startswith("FAILED")
    assert "every replica needs the same --redis-key-file" in steps["shared tokens"]
    assert steps["PACS request"] == "skipped no access token to try"
    assert "Traceback" not in done.stderr
    assert shared.record(redis) == record
    assert token_server.calls["exchange"] == 1 and token_server.calls["refresh"] == 1


def test_check_auth_with_redis_and_no_key_file_stops_as_serve_does(
    shared: SharedDeployment, redis: RedisServer, tmp_path: Path
) -> None:
    folder = write_config(tmp_path / "admin", shared.servers, shared.models)
    without_key = ["--redis", redis.url, "--redis-namespace", NAMESPACE]
    done = check_auth(folder, *without_key)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "give --redis-key-file" in done.stderr and shared.server_id in done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr

    serve = [*model_proxy_argv(), "serve", "--config-dir", str(folder), "--no-tls"]
    serve += ["--host", LOOPBACK, "--port", str(free_port()), *without_key]
    refused = subprocess.run(
        serve, env=child_env(), capture_output=True, text=True, timeout=60, cwd=folder
    )
    assert refused.returncode == 2
    assert done.stderr.strip() in refused.stderr


def test_check_auth_names_an_unreachable_redis_without_its_password(
    shared: SharedDeployment, token_server: TokenServer, redis: RedisServer, tmp_path: Path
) -> None:
    folder = write_config(tmp_path / "admin", shared.servers, shared.models)
    port = free_port()  # nothing listens there
    env = {
        "MODEL_PROXY_REDIS": f"redis://:{REDIS_PASSWORD}@{LOOPBACK}:{port}/0",
        "MODEL_PROXY_REDIS_KEY_FILE": str(shared.key_file),
    }
    done = check_auth(folder, env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    redacted = f"redis://:***@{LOOPBACK}:{port}/0"
    assert f"the shared Redis at {redacted} (--redis) does not answer" in done.stderr
    assert "nothing was checked" in done.stderr and done.stdout == ""
    assert "Traceback" not in done.stderr and REDIS_PASSWORD not in done.stderr

    # A Redis that answers but refuses the password: as clear, and the same exit code.
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    args = ["--redis", redis.url, "--redis-password-file", str(wrong)]
    done = check_auth(folder, *args, "--redis-key-file", str(shared.key_file))
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"the shared Redis at {redis.url} (--redis) refuses the password" in done.stderr
    assert "Traceback" not in done.stderr and "not-the-password" not in done.stderr
    assert sum(token_server.calls.values()) == 0
    assert no_token_files(folder / "data")
