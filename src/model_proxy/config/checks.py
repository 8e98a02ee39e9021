"""Checks of single values and the words used for them in messages.

Each check raises ``ValueError("expected X, got Y")``; the loader prefixes file,
entry and field. Values are shown as they look in the JSON file.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import TypeVar
from urllib.parse import SplitResult, urlsplit
from urllib.request import url2pathname

from pydantic import ValidationInfo

from model_proxy.errors import redact_urls

Member = TypeVar("Member", bound=StrEnum)


class EntryProblems(ValueError):
    """Several problems in one entry, as (field path, message) pairs.

    Field paths are relative to where pydantic reports the error, e.g.
    ``"dataFilter[0].dataKey"`` from a model-level validator.
    """

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {message}" for field, message in problems))
        self.problems = problems


# What each JSON field must hold, keyed by its name in the file. The loader uses
# these to phrase type errors and, through the keys, to spot unknown fields.
SECRET_REFERENCE = 'a string, {"env": "VARIABLE"} or {"file": "/path/of/file"}'  # noqa: S105 (describes, holds none)
# A display name (ours): /status and check-config show it next to the UUID.
NAME_FIELD = "a string of 1 to 64 characters, no control characters"
SERVER_FIELDS: dict[str, str] = {
    "uri": "a string (an http(s):// or file:// URL)",
    "name": NAME_FIELD,
    "isDefault": "true or false",
    "statusUri": "a string (an http(s):// URL)",
    "authType": 'one of "", "basicAuth", "token", "zhivaAuth", "oauth2", "bearer"',
    "login": "a string",
    "password": SECRET_REFERENCE,
    "authToken": SECRET_REFERENCE,
    "token": SECRET_REFERENCE,
    "signInServer": "a string (an http(s):// URL)",
    "signInTokenServer": "a string (an http(s):// URL)",
    "refreshServer": "a string (an http(s):// URL)",
    "tokenUrl": "a string (an http(s):// URL)",
    "clientId": "a string",
    "clientSecret": SECRET_REFERENCE,
    "clientAuthMethod": '"client_secret_basic" or "client_secret_post"',
    "scope": "a string (space-separated scopes)",
    "audience": "a string",
    "tlsVerify": "true, false or the path of a CA bundle file",
    "cacheValidation": 'one of "count", "strict", "off"',
}
SECRET_FIELDS = frozenset({"password", "authToken", "token", "clientSecret"})

DATA_FILTER_FIELDS: dict[str, str] = {
    "dataKey": 'a string of letters, digits and hyphens (like "series-one")',
    "title": "a string",
    "description": "a string",
    "dataFilter": 'an array of {"dataKey": ..., "title": ...} objects',
}

MODEL_FIELDS: dict[str, str] = {
    "uri": "a string (an http(s):// URL)",
    "task": 'one of "segmentation", "annotation", "prediction"',
    "supports": 'a non-empty array of "/studies", "/studies/series", "/studies/series/instances"',
    "statusUri": "a string (an http(s):// URL)",
    "dataFilter": DATA_FILTER_FIELDS["dataFilter"],
    "tlsVerify": SERVER_FIELDS["tlsVerify"],
    "retries": "an integer from 0 to 5",
    "input": 'one of "json", "dicom-multipart"',
    "name": f"{NAME_FIELD} (also the algorithm name in DICOM results)",
    "version": "a string (the algorithm version in DICOM results)",
    "store": 'an object {"server": "<servers.json uuid>", "required": true|false}',
    "sendResultObjects": "true or false (send a study's SEG, SR and RT structure sets too)",
}


def describe(value: object) -> str:
    """A value as it looks in the JSON file, shortened for a message."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    text = redact_urls(text)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_type(value: object) -> str:
    """The JSON type of a value, for fields whose value must never be shown."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def one_of(enum: type[StrEnum]) -> str:
    return ", ".join(json.dumps(member.value) for member in enum)


def enum_member(kind: type[Member], value: object) -> Member:
    """``value`` as a member of the config vocabulary ``kind``, or a ValueError
    that lists the allowed spellings.

    >>> from model_proxy.config.enums import Task
    >>> enum_member(Task, "prediction")
    <Task.PREDICTION: 'prediction'>
    """
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
    raise ValueError(f"expected one of {one_of(kind)}, got {describe(value)}")


def is_member(kind: type[StrEnum], value: object) -> bool:
    """Whether ``value`` spells a member of ``kind``."""
    try:
        enum_member(kind, value)
    except ValueError:
        return False
    return True


def _split(value: str) -> SplitResult:
    try:
        return urlsplit(value)
    except ValueError:  # e.g. "http://[::1": an unclosed IPv6 address
        raise ValueError(f"expected a URL, got {describe(value)}") from None


def check_http_url(value: str) -> str:
    parts = _split(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {describe(value)}")
    return value


def check_server_uri(value: str) -> str:
    parts = _split(value)
    scheme = parts.scheme.lower()
    if scheme == "file":
        # A local folder of DICOM files standing in for a PACS.
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError(f"expected file:///absolute/folder, got {describe(value)}")
        folder = Path(url2pathname(parts.path))
        if not folder.is_dir():
            raise ValueError(
                f"folder {describe(str(folder))} does not exist (from {describe(value)})"
            )
    elif scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"expected an http(s):// DICOMweb root or a file:// folder, got {describe(value)}"
        )
    if parts.query or parts.fragment:
        # QIDO/WADO paths are appended to the root; a query would end up in the middle.
        raise ValueError(f"expected a URL without ?query or #fragment, got {describe(value)}")
    stripped = value.rstrip("/")
    return stripped if urlsplit(stripped).path or scheme != "file" else value


def check_tls_verify(value: object, info: ValidationInfo) -> bool | str:
    if isinstance(value, bool):
        return value
    expected = SERVER_FIELDS["tlsVerify"]
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected {expected}, got {describe(value)}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        # Relative CA bundles live next to the config files, not wherever we started.
        base = (info.context or {}).get("base_dir")
        path = Path(base or Path.cwd()) / path
    if not path.is_file():
        raise ValueError(f"expected {expected}, got {describe(value)} (no such file: {path})")
    return str(path.resolve())


NAME_MAX = 64  # a DICOM LO, where a model's name also goes (AlgorithmName)


def check_name(value: str) -> str:
    """A display name: shown in HTML (escaped) and one-line CLI output, so short and
    without line breaks or other control characters."""
    if len(value) > NAME_MAX:
        raise ValueError(f"expected {NAME_FIELD}, got {len(value)} characters")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise ValueError(f"expected {NAME_FIELD}, got {describe(value)}")
    return value


def empty_is_unset(value: object) -> object:
    # The original docs show every field in one template; copies keep "" for
    # the ones that do not apply.
    return None if value == "" else value


def resolve_secret(value: object, info: ValidationInfo) -> object:
    """A secret field's value: a literal string, or read from where a reference points.

    ``{"env": "PACS_PW"}`` reads an environment variable; ``{"file": "pacs_pw"}`` reads
    a file (relative to the config folder), without its trailing newline. Messages
    name the variable or the file, never the value.
    """
    if not isinstance(value, dict):
        return value  # a string, or a wrong type the loader describes without showing it
    if len(value) == 1 and isinstance(value.get("env"), str) and value["env"]:
        return _secret_from_env(value["env"])
    if len(value) == 1 and isinstance(value.get("file"), str) and value["file"]:
        return _secret_from_file(value["file"], info)
    keys = ", ".join(json.dumps(str(key)) for key in value) or "none"
    raise ValueError(f"expected {SECRET_REFERENCE}, got an object with the keys {keys}")


def _secret_from_env(name: str) -> str:
    found = os.environ.get(name)
    if found is None:
        raise ValueError(f"environment variable {describe(name)} is not set")
    if not found:
        raise ValueError(f"environment variable {describe(name)} is empty")
    return found


def _secret_from_file(name: str, info: ValidationInfo) -> str:
    path = Path(name).expanduser()
    if not path.is_absolute():
        base = (info.context or {}).get("base_dir")
        path = Path(base or Path.cwd()) / path
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"secret file {describe(str(path))} does not exist") from None
    except UnicodeDecodeError:
        raise ValueError(f"secret file {describe(str(path))} is not UTF-8 text") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"secret file {describe(str(path))} cannot be read: {reason}") from None
    # `echo secret > file` and editors add a final newline that is no part of the secret.
    text = text.rstrip("\r\n")
    if not text:
        raise ValueError(f"secret file {describe(str(path))} is empty")
    return text
