"""The encryption of PACS tokens in Redis (pacs/auth/token_cipher.py) and the Redis
health that /status and /metrics show (shared/redis_health.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_proxy.pacs.auth.token_cipher import TokenCipher
from model_proxy.shared import RedisHealth

SECRET = b"a-long-random-secret-for-the-token-encryption"
KEY = "model-proxy:default:tokens:b1407f18-575d-487c-bc0c-640c6da651bc"


def test_a_record_round_trips_and_its_text_is_not_in_the_value() -> None:
    cipher = TokenCipher(SECRET)
    value = cipher.encrypt(b'{"accessToken": "eyJhbGciOi.secret"}', KEY)
    assert b"eyJhbGciOi" not in value and b"accessToken" not in value
    assert cipher.decrypt(value, KEY) == b'{"accessToken": "eyJhbGciOi.secret"}'
    assert cipher.encrypt(b"same", KEY) != cipher.encrypt(b"same", KEY)  # fresh nonces


def test_another_key_or_another_key_name_does_not_decrypt() -> None:
    value = TokenCipher(SECRET).encrypt(b"tokens", KEY)
    with pytest.raises(ValueError, match="encrypted with another key"):
        TokenCipher(SECRET + b"x").decrypt(value, KEY)
    with pytest.raises(ValueError, match="encrypted with another key"):
        TokenCipher(SECRET).decrypt(value, KEY.replace("default", "other"))
    with pytest.raises(ValueError, match="not a token record"):
        TokenCipher(SECRET).decrypt(b'{"accessToken": "x"}', KEY)


def test_key_file_needs_a_long_secret_and_never_echoes_it(tmp_path: Path) -> None:
    good = tmp_path / "key"
    good.write_text(SECRET.decode() + "\n")
    assert TokenCipher.from_file(good).decrypt(TokenCipher(SECRET).encrypt(b"t", KEY), KEY) == b"t"
    short = tmp_path / "short"
    short.write_text("hunter2\n")
    with pytest.raises(ValueError, match="holds 7 characters; at least 32") as refused:
        TokenCipher.from_file(short)
    assert "hunter2" not in str(refused.value)
    with pytest.raises(ValueError, match="cannot read the key file"):
        TokenCipher.from_file(tmp_path / "missing")


def test_redis_health_says_since_when_and_the_last_error() -> None:
    health = RedisHealth("redis://:***@redis:6379/0")
    assert health.snapshot()["reachable"] is None
    health.succeeded()
    health.failed(ConnectionError("Error 111 connecting to redis:6379. Connection refused."))
    health.failed(TimeoutError())
    down = health.snapshot()
    assert down["reachable"] is False and down["commandFailures"] == 2
    assert down["lastError"]["message"] == "TimeoutError"
    health.succeeded()
    up = health.snapshot()
    assert up["reachable"] is True and up["since"] >= down["since"]
    assert up["lastError"]["message"] == "TimeoutError"  # kept: what the outage was
