"""The flags of the results shared on Redis (docs/replicas.md, "Results"): defaults and
the environment; a bad value is one clear line like every serve flag's
(test_cli_limits.py)."""

from __future__ import annotations

import pytest

from model_proxy.cli import commands as cli
from model_proxy.settings import Settings


def test_defaults_match_the_settings() -> None:
    args = cli.build_parser().parse_args(["serve"])
    assert (args.redis_max_entry, args.redis_result_ttl) == ("8MiB", "24h")
    assert (args.redis_lock_lease, args.redis_check_interval) == ("30", "5")
    settings = Settings()
    assert settings.redis_max_entry_bytes == 8 * 1024 * 1024
    assert settings.redis_result_ttl == 24 * 3600
    assert (settings.redis_lock_lease, settings.redis_check_interval) == (30.0, 5.0)


def test_flags_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_PROXY_REDIS_MAX_ENTRY", "0")
    monkeypatch.setenv("MODEL_PROXY_REDIS_LOCK_LEASE", "12")
    args = cli.build_parser().parse_args(["serve"])
    assert (args.redis_max_entry, args.redis_lock_lease) == ("0", "12")
