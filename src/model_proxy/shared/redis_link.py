"""The connection to the Redis that replicas share (``--redis URL``).

Only the connection lives here: its URL, its password and one client per process.
What goes through it (PACS tokens, results, jobs) lives with its owner and must keep
the proxy serving when Redis is down (docs/replicas.md).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

from model_proxy.shared.redis_health import RedisHealth

logger = logging.getLogger("model_proxy")

SCHEMES = ("redis", "rediss", "unix")
# Every key starts with model-proxy:<namespace>: so that two deployments share a Redis
# without meeting.
KEY_PREFIX = "model-proxy"
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class RedisSettings:
    # redis://host:6379/0, rediss://host:6380/0?ssl_ca_certs=/ca.pem or unix:///path
    url: str
    # The password, read at start from a file (a mounted secret) so that it appears
    # neither in the process list nor in the environment; a password in the URL works
    # too, and is never logged.
    password_file: Path | None = None
    # Seconds one Redis command may take: a Redis that hangs must not hang requests,
    # which fall back to the replica's own state (docs/replicas.md, "Redis down").
    timeout: float = 2.0
    # --redis-namespace: the deployment's part of the key names.
    namespace: str = "default"
    # --redis-key-file: the secret the PACS tokens are encrypted with in Redis
    # (pacs/auth/token_cipher.py); the same file on every replica.
    key_file: Path | None = None
    # The lease of the lock one replica holds while it renews a server's PACS tokens:
    # longer than a token server call may take (connect plus idle, 40 s at most).
    token_lock_lease: float = 60.0
    # How long a replica waits for another one's renewal (then answers 502): past the
    # lease, so that the lock of a replica that died is taken over.
    token_lock_wait: float = 70.0


def check_redis_url(url: str) -> str:
    """``url`` if it names a Redis the client can reach; ValueError saying why not."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(
            f"expected a redis://, rediss:// or unix:// URL, got {redacted_redis_url(url)!r}"
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"no host in {redacted_redis_url(url)!r}")
    if parts.scheme == "unix" and not parts.path:
        raise ValueError(f"no socket path in {redacted_redis_url(url)!r}")
    return url


def check_namespace(namespace: str) -> str:
    """``namespace`` if it fits in a key name; ValueError saying what is allowed."""
    if not _NAMESPACE.fullmatch(namespace):
        raise ValueError(
            f"expected 1 to 64 letters, digits, '.', '_' or '-', got {namespace[:80]!r}"
        )
    return namespace


def redacted_redis_url(url: str) -> str:
    """``url`` without its password, for logs and /status."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}" if user else f":***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def read_password_file(path: Path) -> str:
    """The password in ``path``, without the line end editors and `kubectl` add."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read the Redis password file {path}: {exc.strerror}") from None
    password = text.rstrip("\r\n")
    if not password:
        raise ValueError(f"the Redis password file {path} is empty")
    return password


class RedisLink:
    """One asyncio Redis client for the process, with a URL that is safe to show."""

    def __init__(self, client: Redis, where: str, namespace: str = "default") -> None:
        self.client = client
        self.where = where
        self.namespace = namespace
        # What the users of the link saw of Redis lately (/status, /metrics).
        self.health = RedisHealth(where)

    def key(self, *parts: str) -> str:
        """``model-proxy:<namespace>:<parts...>``: a key of this deployment."""
        return ":".join((KEY_PREFIX, self.namespace, *parts))

    @classmethod
    def connect(cls, settings: RedisSettings) -> RedisLink:
        """A client for ``settings`` (connections open on first use)."""
        password = read_password_file(settings.password_file) if settings.password_file else None
        client = Redis.from_url(
            settings.url,
            password=password,
            socket_timeout=settings.timeout,
            socket_connect_timeout=settings.timeout,
            health_check_interval=30,
            # Keys and values are bytes: tokens are encrypted, results are binary.
            decode_responses=False,
        )
        return cls(client, redacted_redis_url(settings.url), settings.namespace)

    async def ping(self) -> bool:
        """Whether Redis answers now; a failure is logged without the URL's secret."""
        try:
            answered = bool(await self.client.ping())
        except (RedisError, OSError) as exc:
            self.health.failed(exc)  # logs the warning once per outage
            return False
        self.health.succeeded()
        return answered

    async def aclose(self) -> None:
        await self.client.aclose()
