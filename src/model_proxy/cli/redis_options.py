"""The flags that connect a command to the deployment's shared Redis (``--redis``).

``serve`` and ``check-auth`` take the same four, with the same environment variables
and the same checks, so that ``check-auth`` reaches exactly the token records the
replicas use (docs/replicas.md, "PACS tokens").
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from pathlib import Path

from model_proxy.cli.options import CommandError, add_option
from model_proxy.config import ServerConfig
from model_proxy.pacs.auth.shared_tokens import SHARED_TOKEN_TYPES
from model_proxy.shared import RedisSettings


def add_redis_options(parser: argparse.ArgumentParser) -> None:
    """--redis, --redis-password-file, --redis-key-file and --redis-namespace."""
    add_option(
        parser,
        "redis",
        None,
        "Redis URL the replicas of one deployment share state through, like"
        " redis://redis:6379/0 or rediss://... (default: none, each process on its own)",
    )
    add_option(
        parser,
        "redis-password-file",
        None,
        "file holding the Redis password (a mounted secret; default: none, or the URL's)",
    )
    add_option(
        parser,
        "redis-key-file",
        None,
        "file holding the secret the PACS tokens are encrypted with in Redis, the same"
        " on every replica (at least 32 characters: openssl rand -base64 32); needed with"
        " --redis when servers.json has a token or zhivaAuth server",
    )
    add_option(
        parser,
        "redis-namespace",
        "default",
        "this deployment's part of the Redis key names (model-proxy:<namespace>:...), so"
        " that deployments sharing one Redis never mix",
    )


def redis_settings(args: argparse.Namespace) -> RedisSettings | None:
    """The flags of :func:`add_redis_options`, checked; None without --redis."""
    from model_proxy.pacs.auth.token_cipher import TokenCipher
    from model_proxy.shared.redis_link import (
        check_namespace,
        check_redis_url,
        read_password_file,
    )

    url, password_file, key_file = args.redis, args.redis_password_file, args.redis_key_file
    if not url:
        for flag, given in (("password-file", password_file), ("key-file", key_file)):
            if given:
                raise CommandError(f"--redis-{flag} needs --redis")
        return None
    try:
        check_redis_url(url)
        if password_file:
            read_password_file(Path(password_file))  # fail at start, not at first use
    except ValueError as exc:
        raise CommandError(f"--redis: {exc}") from None
    try:
        namespace = check_namespace(args.redis_namespace)
    except ValueError as exc:
        raise CommandError(f"--redis-namespace: {exc}") from None
    if key_file:
        try:
            TokenCipher.from_file(Path(key_file))
        except ValueError as exc:
            raise CommandError(f"--redis-key-file: {exc}") from None
    return RedisSettings(
        url=url,
        password_file=Path(password_file) if password_file else None,
        namespace=namespace,
        key_file=Path(key_file) if key_file else None,
    )


def check_shared_tokens(redis: RedisSettings | None, servers: Iterable[ServerConfig]) -> None:
    """Refuse --redis without --redis-key-file when a server's tokens would go to Redis:
    they are never stored there in clear (docs/replicas.md, "PACS tokens")."""
    if redis is None or redis.key_file is not None:
        return
    shared = [s.id for s in servers if s.auth_type in SHARED_TOKEN_TYPES]
    if shared:
        raise CommandError(
            f"--redis shares the PACS tokens of {', '.join(shared)} (authType token or"
            " zhivaAuth) between replicas, encrypted: give --redis-key-file (the same"
            " secret file on every replica)"
        )
