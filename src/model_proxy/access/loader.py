"""Read ``access.json`` into an :class:`AccessPolicy`, with messages like config/loader.py.

Every problem is reported at once, naming the file and the field::

    access.json, field "jwt.audience": missing; expected a string or an array of strings
    access.json, field "models.d4e548ad-....keys[0]": "viewr" is not a name in apiKeys

Unknown fields are errors here, not warnings: a misspelt rule in a security file
must not silently leave a model open.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from model_proxy.config import ConfigError
from model_proxy.config.checks import describe, describe_type

from .schema import (
    ACCESS_FIELDS,
    AccessFile,
    JwtSettings,
    ModelRule,
    UnlistedModels,
    key_source_problem,
)

ACCESS_FILE = "access.json"
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes  # SHA-256 of the key
    roles: frozenset[str]


@dataclass(frozen=True)
class AccessPolicy:
    """Who may call the proxy (keys, JWT settings) and which models (rules)."""

    source: Path
    api_keys: tuple[ApiKey, ...]
    jwt: JwtSettings | None
    # The PEM key of "publicKeyFile", loaded once; None with a JWKS.
    public_key: Any
    models: Mapping[str, ModelRule]
    unlisted_models: UnlistedModels
    warnings: tuple[str, ...] = field(default=())
    # Who may use each listed server (servers.json uuid); unlisted: every caller.
    servers: Mapping[str, ModelRule] = field(default_factory=dict)
    # Who may see /status; None: every authenticated caller.
    monitoring: ModelRule | None = None


def find_access_file(config_dir: Path, explicit: Path | None) -> Path | None:
    """``--access-config`` if given, else ``access.json`` next to servers.json if present."""
    if explicit is not None:
        return explicit
    candidate = config_dir / ACCESS_FILE
    return candidate if candidate.exists() else None


def load_access(
    path: Path,
    *,
    known_models: Mapping[str, object] | None = None,
    known_servers: Mapping[str, object] | None = None,
) -> AccessPolicy:
    """Load and check ``path``; ``known_models`` (models.json) and ``known_servers``
    (servers.json) turn stale rules into warnings."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError([f"{source}: file not found"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}: cannot be read: {exc}"]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [f"{source}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"]
        ) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a JSON object, got {describe_type(data)}"])
    try:
        parsed = AccessFile.model_validate(data, context={"base_dir": path.parent})
    except ValidationError as exc:
        messages = [_message(source, error) for error in exc.errors(include_url=False)]
        # pydantic checks across fields only once each field is valid; one round of
        # fixes should be enough, so check the key source on the raw file too.
        raw_jwt = data.get("jwt")
        problem = key_source_problem(raw_jwt) if isinstance(raw_jwt, dict) else None
        line = f'{source}, field "jwt": {problem}'
        if problem and line not in messages:
            messages.append(line)
        raise ConfigError(messages) from None

    errors: list[str] = []
    warnings: list[str] = []
    if not parsed.api_keys and parsed.jwt is None:
        errors.append(
            f'{source}: neither "apiKeys" nor "jwt" is set, so no caller could ever'
            " authenticate; remove the file to leave the proxy open"
        )
    seen: dict[str, str] = {}
    for name, entry in parsed.api_keys.items():
        if entry.sha256 in seen:
            errors.append(
                f'{source}, field "apiKeys.{name}.sha256": the same key as "{seen[entry.sha256]}"'
            )
        seen.setdefault(entry.sha256, name)
    for model_id, rule in parsed.models.items():
        where = f'{source}, field "models.{model_id}'
        if not _UUID.fullmatch(model_id):
            errors.append(f'{where}": the key must be a model UUID from models.json')
        _check_rule(parsed, rule, where, errors, warnings, "call it")
        if known_models is not None and model_id not in known_models:
            warnings.append(f'{where}": not a model of models.json; the rule has no effect')
    for server_id, rule in parsed.servers.items():
        where = f'{source}, field "servers.{server_id}'
        _check_rule(parsed, rule, where, errors, warnings, "use it")
        if known_servers is not None and server_id not in known_servers:
            warnings.append(f'{where}": not a server of servers.json; the rule has no effect')
    if parsed.monitoring is not None:
        where = f'{source}, field "monitoring'
        _check_rule(parsed, parsed.monitoring, where, errors, warnings, "see /status")

    public_key = None
    if parsed.jwt is not None and parsed.jwt.public_key_file is not None:
        public_key = _load_public_key(source, parsed.jwt.public_key_file, errors)
    if errors:
        raise ConfigError(errors, warnings)
    return AccessPolicy(
        source=path,
        api_keys=tuple(
            ApiKey(name, bytes.fromhex(entry.sha256), frozenset(entry.roles))
            for name, entry in parsed.api_keys.items()
        ),
        jwt=parsed.jwt,
        public_key=public_key,
        models=dict(parsed.models),
        unlisted_models=parsed.unlisted_models,
        warnings=tuple(warnings),
        servers=dict(parsed.servers),
        monitoring=parsed.monitoring,
    )


def _check_rule(
    parsed: AccessFile,
    rule: ModelRule,
    where: str,
    errors: list[str],
    warnings: list[str],
    what: str,
) -> None:
    """A rule's key names exist, its subjects have a jwt to come from; an empty rule
    locks everyone out (a warning: it may be meant)."""
    for index, key_name in enumerate(rule.keys):
        if key_name not in parsed.api_keys:
            errors.append(f'{where}.keys[{index}]": {describe(key_name)} is not a name in apiKeys')
    if rule.subjects and parsed.jwt is None:
        errors.append(f'{where}.subjects": subjects need "jwt" to be configured')
    if not (rule.keys or rule.subjects or rule.roles):
        warnings.append(f'{where}": lists no keys, subjects or roles; nobody may {what}')


def _load_public_key(source: str, path: Path, errors: list[str]) -> Any:
    try:
        pem = path.read_bytes()
    except OSError as exc:
        errors.append(f'{source}, field "jwt.publicKeyFile": cannot read {path}: {exc.strerror}')
        return None
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        return load_pem_public_key(pem)
    except (ValueError, TypeError, jwt.InvalidKeyError):
        errors.append(
            f'{source}, field "jwt.publicKeyFile": {path} is not a PEM public key'
            ' (expected "-----BEGIN PUBLIC KEY-----")'
        )
        return None


def _message(source: str, error: ErrorDetails) -> str:
    path, generic = _paths(error["loc"])
    where = f'{source}, field "{path}"' if path else source
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ValueError):
        return f"{where}: {cause}"
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown field (see docs/security.md for the fields of access.json)"
    expected = ACCESS_FIELDS.get(generic, error["msg"])
    if error["type"] == "missing":
        return f"{where}: missing; expected {expected}"
    if error["type"].startswith(("greater_than", "less_than")):
        return f"{where}: expected {expected}, got {describe(error.get('input'))}"
    return f"{where}: expected {expected}, got {describe_type(error.get('input'))}"


def _paths(loc: tuple[str | int, ...]) -> tuple[str, str]:
    """The field path as written (``apiKeys.viewer.sha256``) and its generic form
    (``apiKeys.*.sha256``) that names what the field must hold."""
    path = ""
    generic = ""
    for index, part in enumerate(loc):
        if isinstance(part, int):
            path += f"[{part}]"
            continue
        keyed = index == 1 and loc[0] in ("apiKeys", "models", "servers")
        path = f"{path}.{part}" if path else part
        generic = f"{generic}.{'*' if keyed else part}" if generic else part
    return path, generic
