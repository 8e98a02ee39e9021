"""``--forwarded-allow-ips``: addresses and networks of trusted reverse proxies."""

from __future__ import annotations

import pytest

from model_proxy.cli.commands import build_parser
from model_proxy.cli.options import CommandError, parse_forwarded_allow_ips


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("127.0.0.1", ["127.0.0.1"]),
        (" 127.0.0.1 , ::1,10.0.0.0/8 ", ["127.0.0.1", "::1", "10.0.0.0/8"]),
        ("*", ["*"]),
    ],
)
def test_addresses_and_networks(text: str, expected: list[str]) -> None:
    assert parse_forwarded_allow_ips(text) == expected


@pytest.mark.parametrize("text", ["nginx", "10.0.0.0/33", "127.0.0.1,*", "1.2.3"])
def test_anything_else_is_refused_with_the_entry(text: str) -> None:
    with pytest.raises(CommandError, match="--forwarded-allow-ips must list IP addresses"):
        parse_forwarded_allow_ips(text)


def test_nobody_is_trusted_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODEL_PROXY_FORWARDED_ALLOW_IPS", raising=False)
    args = build_parser().parse_args(["serve"])
    assert parse_forwarded_allow_ips(args.forwarded_allow_ips) == []
    monkeypatch.setenv("MODEL_PROXY_FORWARDED_ALLOW_IPS", "127.0.0.1")
    args = build_parser().parse_args(["serve"])
    assert parse_forwarded_allow_ips(args.forwarded_allow_ips) == ["127.0.0.1"]
