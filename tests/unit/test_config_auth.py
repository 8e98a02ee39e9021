"""servers.json: the auth types beyond the original, and secrets referenced by env or file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from config_cases import S1, TOKEN_AUTH, only, server_errors, write_config

from model_proxy.config import AuthType, ConfigError, load_config, parse_servers
from model_proxy.config.schema import ClientAuthMethod

OAUTH2: dict[str, Any] = {
    "uri": "https://pacs.example/dicom-web",
    "authType": "oauth2",
    "tokenUrl": "https://login.example/realms/pacs/protocol/openid-connect/token",
    "clientId": "model-proxy",
    "clientSecret": "cl13nt-s3cret",
    "scope": "dicom.read",
    "audience": "https://pacs.example",
}
BEARER: dict[str, Any] = {
    "uri": "https://pacs.example/dicom-web",
    "authType": "bearer",
    "authToken": "st4tic-t0ken",
}


def test_oauth2_entry_loads() -> None:
    server = parse_servers({S1: OAUTH2})[0][S1]
    assert server.auth_type is AuthType.OAUTH2
    assert server.client_secret is not None
    assert server.client_secret.get_secret_value() == "cl13nt-s3cret"
    assert server.client_auth_method is ClientAuthMethod.BASIC
    assert (server.scope, server.audience) == ("dicom.read", "https://pacs.example")
    posted = parse_servers({S1: OAUTH2 | {"clientAuthMethod": "client_secret_post"}})[0][S1]
    assert posted.client_auth_method is ClientAuthMethod.POST
    assert "cl13nt-s3cret" not in repr(server)


def test_oauth2_needs_token_url_client_id_and_secret() -> None:
    entry = {"uri": "https://pacs/dicom-web", "authType": "oauth2"}
    messages = server_errors(entry)
    assert len(messages) == 3
    for field in ("tokenUrl", "clientId", "clientSecret"):
        assert any(f'field "{field}": required when authType is "oauth2"' in m for m in messages)


def test_oauth2_bad_values() -> None:
    messages = server_errors(OAUTH2 | {"tokenUrl": "login.example/token", "clientAuthMethod": "x"})
    assert any('field "tokenUrl"' in m and "http" in m for m in messages)
    assert any('field "clientAuthMethod"' in m and "client_secret_post" in m for m in messages)


def test_bearer_needs_a_token() -> None:
    server = parse_servers({S1: BEARER})[0][S1]
    assert server.auth_token is not None and server.auth_token.get_secret_value() == "st4tic-t0ken"
    message = only(server_errors({"uri": "https://pacs", "authType": "bearer"}))
    assert 'field "authToken": required when authType is "bearer"' in message


def test_fields_of_other_auth_types_warn() -> None:
    _, warnings = parse_servers({S1: BEARER | {"clientId": "x", "scope": "y"}})
    assert '"clientId", "scope" set but not used, because authType is "bearer"' in only(warnings)


def test_token_without_refresh_server_warns() -> None:
    entry = {k: v for k, v in TOKEN_AUTH.items() if k != "refreshServer"}
    _, warnings = parse_servers({S1: entry})
    assert 'without "refreshServer"' in only(warnings)


# --- secret references --------------------------------------------------------------


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_CLIENT_SECRET", "fr0m-env")
    server = parse_servers({S1: OAUTH2 | {"clientSecret": {"env": "PACS_CLIENT_SECRET"}}})[0][S1]
    assert server.client_secret is not None
    assert server.client_secret.get_secret_value() == "fr0m-env"


def test_secret_from_file_without_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "pacs_pw").write_text("fr0m-f1le \n")
    absolute = {"authToken": {"file": str(tmp_path / "secrets" / "pacs_pw")}}
    relative = {"authToken": {"file": "secrets/pacs_pw"}}
    for entry in (BEARER | absolute, BEARER | relative):
        server = parse_servers({S1: entry}, base_dir=tmp_path)[0][S1]
        assert server.auth_token is not None
        assert server.auth_token.get_secret_value() == "fr0m-f1le "  # only newlines go


def test_missing_references_name_file_entry_field_and_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NO_SUCH_VARIABLE", raising=False)
    monkeypatch.setenv("EMPTY_VARIABLE", "")
    (tmp_path / "empty").write_text("\n")
    cases = {
        '{"env": "NO_SUCH_VARIABLE"}': (
            {"env": "NO_SUCH_VARIABLE"},
            'environment variable "NO_SUCH_VARIABLE" is not set',
        ),
        '{"env": "EMPTY_VARIABLE"}': (
            {"env": "EMPTY_VARIABLE"},
            'environment variable "EMPTY_VARIABLE" is empty',
        ),
        "missing file": (
            {"file": "nowhere/pw"},
            f'secret file "{tmp_path / "nowhere" / "pw"}" does not exist',
        ),
        "empty file": ({"file": "empty"}, "is empty"),
        "folder": ({"file": "."}, "cannot be read"),
        "other keys": (
            {"vault": "secret/pacs"},
            'expected a string, {"env": "VARIABLE"} or {"file": "/path/of/file"}, got an object'
            ' with the keys "vault"',
        ),
    }
    for name, (reference, expected) in cases.items():
        message = only(server_errors(BEARER | {"authToken": reference}, base_dir=tmp_path))
        assert message.startswith(f'servers.json: entry "{S1}", field "authToken": '), name
        assert expected in message, (name, message)


def test_referenced_secrets_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("PACS_PW", "env-pa55word")
    (tmp_path / "pw").write_text("file-pa55word")
    zhiva = {
        "uri": "https://pacs/dicom-web",
        "authType": "zhivaAuth",
        "login": "doctor",
        "password": {"env": "PACS_PW"},
        "signInServer": "https://pacs/auth/sign-user",
        "signInTokenServer": "not a url",
    }
    token = BEARER | {"authToken": {"file": "pw"}, "isDefault": "yes"}
    write_config(tmp_path, {S1: zhiva, "63140137-a63d-4ad1-b489-3479bc43387c": token}, {})
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    shown = str(info.value) + "\n".join(info.value.warnings) + caplog.text
    assert "signInTokenServer" in shown and "isDefault" in shown
    assert "env-pa55word" not in shown and "file-pa55word" not in shown
