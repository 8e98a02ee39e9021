"""State that several replicas share through Redis (``--redis``; docs/replicas.md)."""

from model_proxy.shared.redis_health import RedisHealth
from model_proxy.shared.redis_link import RedisLink, RedisSettings, redacted_redis_url

__all__ = ["RedisHealth", "RedisLink", "RedisSettings", "redacted_redis_url"]
