"""What the ``model-proxy`` commands share: the error a user can fix, flags that also
come from ``MODEL_PROXY_<FLAG>``, the parsing of flag values, and loading the
configuration files the way a command reports them (one clear line, exit code 2).
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
from enum import StrEnum
from pathlib import Path

from model_proxy.access import AccessPolicy
from model_proxy.config import ConfigError, ProxyConfig, load_config
from model_proxy.settings import MiB

EXIT_USAGE = 2

# Logs, cached results and tokens name studies and hold derived patient data: what
# the proxy writes is for its own user only (files 0600, folders 0700).
PRIVATE_UMASK = 0o077


class CommandError(Exception):
    """A problem the user can fix; printed as is, exit code 2."""


def add_option(
    parser: argparse.ArgumentParser, flag: str, default: str | None, help_text: str
) -> None:
    """``--flag``, whose default comes from ``MODEL_PROXY_<FLAG>`` when that is set."""
    env_name = "MODEL_PROXY_" + flag.upper().replace("-", "_")
    value = os.environ.get(env_name)
    parser.add_argument(
        f"--{flag}",
        default=value if value is not None else default,
        help=f"{help_text} (env {env_name}; default: %(default)s)",
    )


def parse_port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise CommandError(f"port must be a number from 1 to 65535, got {value!r}")
    return int(value)


def parse_seconds(value: str, flag: str, *, allow_zero: bool = False) -> float:
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        kind = "zero or a positive" if allow_zero else "a positive"
        raise CommandError(f"--{flag} must be {kind} number of seconds, got {value!r}")
    return seconds


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: str, flag: str) -> float:
    """Seconds from "90", "90s", "30m", "12h", "7d"; positive."""
    found = _DURATION.fullmatch(value.strip().lower())
    seconds = float(found.group(1)) * _DURATION_UNITS[found.group(2)] if found else 0.0
    if seconds <= 0:
        raise CommandError(
            f"--{flag} must be a positive duration like 3600, 30m, 12h or 7d, got {value!r}"
        )
    return seconds


def parse_choice(value: str, flag: str, choices: type[StrEnum]) -> str:
    """``value`` if it names one of ``choices`` (any case), in its canonical spelling."""
    lowered = value.strip().lower()
    if lowered not in {choice.value for choice in choices}:
        allowed = ", ".join(choice.value for choice in choices)
        raise CommandError(f"--{flag} must be one of {allowed}, got {value!r}")
    return lowered


def parse_count(value: str, flag: str, low: int, high: int) -> int:
    if not value.isdigit() or not low <= int(value) <= high:
        raise CommandError(f"--{flag} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kKmMgGtT]i?[bB]?|[bB])?")
_UNITS = {"": 1, "b": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "t": 1000**4}


def parse_size(value: str, flag: str) -> int:
    """Bytes from "0", "1500000", "500MB", "2GiB" (k/M/G/T; with i, powers of 1024)."""
    found = _SIZE.fullmatch(value.strip())
    if found is None:
        raise CommandError(f"--{flag} must be a size like 0, 500MB or 2GiB, got {value!r}")
    unit = (found.group(2) or "").lower().removesuffix("b")
    factor = 1024 ** "kmgt".index(unit[0]) * 1024 if unit.endswith("i") else _UNITS[unit]
    return int(float(found.group(1)) * factor)


def parse_memory_budget(value: str) -> int:
    budget = parse_size(value, "memory-budget")
    if budget < MiB:
        raise CommandError(f"--memory-budget must be at least 1MiB, got {value!r}")
    return budget


def parse_forwarded_allow_ips(value: str) -> list[str]:
    """Addresses and networks (``127.0.0.1``, ``10.0.0.0/8``, ``::1``) or ``*``; "" for none."""
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    if entries == ["*"]:
        return entries
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise CommandError(
                "--forwarded-allow-ips must list IP addresses or networks (like"
                f" 127.0.0.1,10.0.0.0/8) or be *, got {entry!r}"
            ) from None
    return entries


def write_private_files() -> None:
    """Make every file and folder this process creates from now on owner-only."""
    os.umask(PRIVATE_UMASK)


def optional_path(value: str | None) -> Path | None:
    return Path(value) if value else None


def load_checked_access(
    config_dir: Path, explicit: Path | None, config: ProxyConfig
) -> AccessPolicy | None:
    from model_proxy.access import find_access_file, load_access

    path = find_access_file(config_dir, explicit)
    if path is None:
        return None
    try:
        return load_access(path, known_models=config.models, known_servers=config.servers)
    except ConfigError as exc:
        lines = "\n".join(f"  - {line}" for line in exc.messages)
        raise CommandError(f"invalid access rules in {path}:\n{lines}") from None


def secret_file_warnings(
    config_dir: Path, access: AccessPolicy | None, tls_key: Path | None
) -> list[str]:
    from model_proxy.access.posture import exposure_warnings, files_with_secrets

    access_file = access.source if access else None
    return exposure_warnings(
        files_with_secrets(config_dir, access_file=access_file, tls_key=tls_key)
    )


def load_checked_config(config_dir: Path) -> ProxyConfig:
    try:
        return load_config(config_dir)
    except ConfigError as exc:
        lines = "\n".join(f"  - {line}" for line in exc.messages)
        # Warnings too: an ignored field may be why a required one is missing.
        warned = "".join(f"\nwarning: {line}" for line in exc.warnings)
        raise CommandError(
            f"invalid configuration in {config_dir.absolute()}:\n{lines}{warned}"
        ) from None
