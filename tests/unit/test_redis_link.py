"""``--redis``: which URLs are taken, what is refused with a clear message, and that a
password never shows in what the proxy prints."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from model_proxy.cli import commands as cli
from model_proxy.cli.options import CommandError
from model_proxy.cli.redis_options import redis_settings
from model_proxy.shared import RedisLink, RedisSettings, redacted_redis_url
from model_proxy.shared.redis_link import check_redis_url, read_password_file


@pytest.mark.parametrize(
    "url",
    [
        "redis://redis:6379/0",
        "redis://:pw@redis:6379/0",
        "rediss://user:pw@redis.example:6380/1?ssl_ca_certs=/ca.pem",
        "unix:///run/redis/redis.sock",
    ],
)
def test_redis_urls_taken(url: str) -> None:
    assert check_redis_url(url) == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://redis:6379", "expected a redis://, rediss:// or unix:// URL"),
        ("redis:///0", "no host"),
        ("unix://", "no socket path"),
        ("redis.example:6379", "expected a redis://"),
    ],
)
def test_bad_redis_urls_say_why(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        check_redis_url(url)


def test_a_refused_url_does_not_echo_its_password() -> None:
    with pytest.raises(ValueError) as refused:
        check_redis_url("http://:hunter2@redis:6379")
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("redis://:pw@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://app:pw@redis:6380/1?x=1", "rediss://app:***@redis:6380/1?x=1"),
    ],
)
def test_redacted_urls(url: str, shown: str) -> None:
    assert redacted_redis_url(url) == shown


def test_password_file_loses_its_line_end(tmp_path: Path) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text("s3cret\n")
    assert read_password_file(secret) == "s3cret"


def test_empty_or_missing_password_file_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        read_password_file(empty)
    with pytest.raises(ValueError, match="cannot read the Redis password file"):
        read_password_file(tmp_path / "missing")


def flags(
    url: str | None,
    password_file: str | None,
    key_file: str | None = None,
    namespace: str = "default",
) -> argparse.Namespace:
    """serve's parsed --redis flags."""
    return argparse.Namespace(
        redis=url,
        redis_password_file=password_file,
        redis_key_file=key_file,
        redis_namespace=namespace,
    )


def test_flags_make_settings(tmp_path: Path) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text("s3cret")
    key = tmp_path / "token-key"
    key.write_text("k" * 32 + "\n")
    assert redis_settings(flags(None, None)) is None
    assert redis_settings(flags("redis://redis:6379/0", str(secret))) == RedisSettings(
        url="redis://redis:6379/0", password_file=secret
    )
    assert redis_settings(
        flags("redis://redis:6379/0", None, str(key), "site-a.prod")
    ) == RedisSettings(url="redis://redis:6379/0", namespace="site-a.prod", key_file=key)


def test_flag_mistakes_are_command_errors(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="--redis-password-file needs --redis"):
        redis_settings(flags(None, str(tmp_path / "pw")))
    with pytest.raises(CommandError, match="--redis-key-file needs --redis"):
        redis_settings(flags(None, None, str(tmp_path / "key")))
    with pytest.raises(CommandError, match="--redis: expected a redis://"):
        redis_settings(flags("http://redis", None))
    with pytest.raises(CommandError, match="--redis: cannot read the Redis password file"):
        redis_settings(flags("redis://redis:6379/0", str(tmp_path / "missing")))
    with pytest.raises(CommandError, match="--redis-key-file: cannot read the key file"):
        redis_settings(flags("redis://redis:6379/0", None, str(tmp_path / "missing")))
    with pytest.raises(CommandError, match="--redis-namespace: expected 1 to 64 letters"):
        redis_settings(flags("redis://redis:6379/0", None, None, "a:b"))


def test_keys_are_under_the_deployments_namespace() -> None:
    link = RedisLink.connect(RedisSettings(url="redis://redis:6379/0", namespace="site-a"))
    assert link.key("tokens", "b1407f18") == "model-proxy:site-a:tokens:b1407f18"


def test_check_auth_takes_the_redis_flags_of_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    # The same flags and environment variables: check-auth reaches the replicas' records.
    environment = {
        "MODEL_PROXY_REDIS": "redis://redis:6379/0",
        "MODEL_PROXY_REDIS_PASSWORD_FILE": "/run/secrets/redis-password",
        "MODEL_PROXY_REDIS_KEY_FILE": "/run/secrets/token-key",
        "MODEL_PROXY_REDIS_NAMESPACE": "site-a",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    parser = cli.build_parser()
    serve, check = parser.parse_args(["serve"]), parser.parse_args(["check-auth"])
    for name in environment:
        flag = name.removeprefix("MODEL_PROXY_").lower()
        assert getattr(check, flag) == getattr(serve, flag) == environment[name]
    check = parser.parse_args(["check-auth", "--redis-namespace", "site-b"])
    assert check.redis_namespace == "site-b"  # a flag wins over the environment
