"""``--cache-size``: sizes as people write them, and a clear refusal otherwise."""

from __future__ import annotations

import pytest

from model_proxy.cli.options import CommandError, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1500000", 1_500_000),
        ("500MB", 500_000_000),
        ("500mb", 500_000_000),
        ("3.5MB", 3_500_000),
        ("2GiB", 2 * 1024**3),
        ("2G", 2_000_000_000),
        ("10KiB", 10 * 1024),
        ("1TB", 10**12),
        (" 64 MiB ", 64 * 1024**2),
        ("42B", 42),
    ],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text, "cache-size") == expected


@pytest.mark.parametrize("text", ["", "lots", "-1", "2 GiBs", "1e9", "GiB", "2PiB"])
def test_bad_sizes_say_what_is_expected(text: str) -> None:
    with pytest.raises(CommandError, match=r"--cache-size must be a size like 0, 500MB or 2GiB"):
        parse_size(text, "cache-size")
