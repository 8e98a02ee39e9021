"""access.json: a good file loads; every mistake is named with file and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import model_proxy.access
from model_proxy.access import digest_of, find_access_file, load_access, new_api_key
from model_proxy.access.schema import UnlistedModels
from model_proxy.config import ConfigError

MODEL = "d4e548ad-f365-4c34-918b-4e61a8b896f0"
DIGEST = digest_of("mpk_example").hex()
JWT: dict[str, Any] = {
    "jwksUri": "https://login.hospital.local/realms/imaging/protocol/openid-connect/certs",
    "issuer": "https://login.hospital.local/realms/imaging",
    "audience": "model-proxy",
}


def write(tmp_path: Path, content: object) -> Path:
    path = tmp_path / "access.json"
    path.write_text(json.dumps(content) if not isinstance(content, str) else content)
    return path


def errors_of(tmp_path: Path, content: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_access(write(tmp_path, content))
    return caught.value.messages


def test_public_api() -> None:
    assert sorted(model_proxy.access.__all__) == sorted(
        [
            "ACCESS_FILE",
            "ANONYMOUS",
            "NO_ACCESS",
            "AccessGuard",
            "AccessPolicy",
            "Caller",
            "CallerKind",
            "digest_of",
            "find_access_file",
            "load_access",
            "new_api_key",
        ]
    )


def test_a_complete_file_loads(tmp_path: Path) -> None:
    policy = load_access(
        write(
            tmp_path,
            {
                "apiKeys": {"viewer": {"sha256": DIGEST.upper(), "roles": ["radiologist"]}},
                "jwt": {
                    **JWT,
                    "algorithms": ["RS256", "ES256"],
                    "rolesClaim": "realm_access.roles",
                },
                "models": {MODEL: {"keys": ["viewer"], "roles": ["radiologist"]}},
                "unlistedModels": "deny",
            },
        ),
        known_models={MODEL: object()},
    )
    (key,) = policy.api_keys
    assert (key.name, key.digest.hex(), key.roles) == ("viewer", DIGEST, frozenset({"radiologist"}))
    assert policy.jwt is not None and policy.jwt.audience == ("model-proxy",)
    assert policy.jwt.algorithms == ("RS256", "ES256")
    assert policy.models[MODEL].keys == ("viewer",)
    assert policy.unlisted_models is UnlistedModels.DENY
    assert policy.warnings == ()


def test_the_file_is_found_next_to_the_configs_or_given(tmp_path: Path) -> None:
    assert find_access_file(tmp_path, None) is None
    write(tmp_path, {})
    assert find_access_file(tmp_path, None) == tmp_path / "access.json"
    assert find_access_file(tmp_path, Path("/etc/x.json")) == Path("/etc/x.json")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{", "access.json: invalid JSON at line 1, column 2"),
        ([], "access.json: expected a JSON object, got an array"),
        ({}, 'neither "apiKeys" nor "jwt" is set'),
        ({"apikeys": {}}, 'field "apikeys": unknown field'),
        (
            {"apiKeys": {"viewer": {"sha256": "mpk_the-key-itself"}}},
            'field "apiKeys.viewer.sha256": expected the SHA-256 hex digest of the key'
            " (model-proxy gen-api-key prints it): 64 hexadecimal digits, got a string of"
            " 18 characters",
        ),
        (
            {"apiKeys": {"a b": {"sha256": DIGEST}}},
            'field "apiKeys": key names are letters, digits and . _ @ -',
        ),
        (
            {"apiKeys": {"a": {"sha256": DIGEST}, "b": {"sha256": DIGEST}}},
            'field "apiKeys.b.sha256": the same key as "a"',
        ),
        (
            {"jwt": {k: v for k, v in JWT.items() if k != "audience"}},
            'field "jwt.audience": missing; expected a string or an array of strings',
        ),
        ({"jwt": {**JWT, "issuer": 3}}, 'field "jwt.issuer": expected a string'),
        (
            {"jwt": {**JWT, "algorithms": ["RS256", "HS256"]}},
            'field "jwt.algorithms": expected a non-empty array of RS256',
        ),
        ({"jwt": {**JWT, "algorithms": ["none"]}}, "HMAC and none are refused"),
        ({"jwt": {**JWT, "jwksUri": "ftp://x"}}, 'field "jwt.jwksUri": expected an http://'),
        (
            {"jwt": {**JWT, "publicKeyFile": __file__}},
            'field "jwt": give exactly one of "jwksUri" and "publicKeyFile"',
        ),
        ({"jwt": {**JWT, "leewaySeconds": 3600}}, 'field "jwt.leewaySeconds": expected a number'),
        ({"jwt": {**JWT, "rolesClaim": "a..b"}}, 'field "jwt.rolesClaim": expected a dotted'),
        (
            {"apiKeys": {"a": {"sha256": DIGEST}}, "models": {MODEL: {"keys": ["b"]}}},
            f'field "models.{MODEL}.keys[0]": "b" is not a name in apiKeys',
        ),
        (
            {"apiKeys": {"a": {"sha256": DIGEST}}, "models": {"seg": {"keys": ["a"]}}},
            'field "models.seg": the key must be a model UUID',
        ),
        (
            {"apiKeys": {"a": {"sha256": DIGEST}}, "models": {MODEL: {"subjects": ["x"]}}},
            "subjects need",
        ),
        (
            {"apiKeys": {"a": {"sha256": DIGEST}}, "models": {MODEL: {"roles": "admin"}}},
            f'field "models.{MODEL}.roles": expected an array of strings, got "admin"',
        ),
        (
            {"apiKeys": {"a": {"sha256": DIGEST}}, "unlistedModels": "open"},
            'field "unlistedModels": expected "allow" (any authenticated caller) or "deny"',
        ),
    ],
)
def test_mistakes_are_named(tmp_path: Path, content: object, expected: str) -> None:
    messages = errors_of(tmp_path, content)
    assert any(expected in message for message in messages), messages
    assert all(message.startswith(str(tmp_path / "access.json")) for message in messages)


def test_a_pasted_key_is_never_echoed(tmp_path: Path) -> None:
    key = new_api_key()
    messages = errors_of(tmp_path, {"apiKeys": {"viewer": {"sha256": key}}})
    assert key not in "\n".join(messages)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    messages = errors_of(
        tmp_path,
        {"jwt": {"jwksUri": "x", "issuer": 1}, "unlistedModels": "maybe", "extra": 1},
    )
    assert len(messages) >= 4, messages


def test_public_key_files(tmp_path: Path) -> None:
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (tmp_path / "idp.pem").write_bytes(pem)
    jwt = {"publicKeyFile": "idp.pem", "issuer": "i", "audience": "a", "algorithms": ["ES256"]}
    policy = load_access(write(tmp_path, {"jwt": jwt}))
    assert isinstance(policy.public_key, ec.EllipticCurvePublicKey)

    (tmp_path / "idp.pem").write_text("not a key")
    assert any("is not a PEM public key" in m for m in errors_of(tmp_path, {"jwt": jwt}))
    missing = {**jwt, "publicKeyFile": "nowhere.pem"}
    assert any("no such file" in m for m in errors_of(tmp_path, {"jwt": missing}))


def test_rules_that_do_nothing_are_warnings(tmp_path: Path) -> None:
    other = "63140137-a63d-4ad1-b489-3479bc43387c"
    policy = load_access(
        write(tmp_path, {"apiKeys": {"a": {"sha256": DIGEST}}, "models": {MODEL: {}, other: {}}}),
        known_models={MODEL: object()},
    )
    assert any("nobody may call it" in w and MODEL in w for w in policy.warnings)
    assert any("not a model of models.json" in w and other in w for w in policy.warnings)


SERVER = "b1407f18-8a1c-4e5b-9d65-3f2f0c1d2e3a"


def test_server_and_monitoring_rules_load(tmp_path: Path) -> None:
    policy = load_access(
        write(
            tmp_path,
            {
                "apiKeys": {"ops": {"sha256": DIGEST}},
                "servers": {SERVER: {"roles": ["radiologist"]}, "stale": {"keys": ["ops"]}},
                "monitoring": {"keys": ["ops"]},
            },
        ),
        known_servers={SERVER: object()},
    )
    assert policy.servers[SERVER].roles == ("radiologist",)
    assert policy.monitoring is not None and policy.monitoring.keys == ("ops",)
    assert policy.warnings == (
        f'{tmp_path / "access.json"}, field "servers.stale": not a server of servers.json;'
        " the rule has no effect",
    )


def test_server_and_monitoring_rules_are_checked(tmp_path: Path) -> None:
    source = tmp_path / "access.json"
    assert errors_of(
        tmp_path,
        {
            "apiKeys": {"ops": {"sha256": DIGEST}},
            "servers": {SERVER: {"keys": ["opz"], "subjects": ["alice"]}},
            "monitoring": {"roles": "admin"},
        },
    ) == [f'{source}, field "monitoring.roles": expected an array of strings, got "admin"']
    assert errors_of(
        tmp_path,
        {
            "apiKeys": {"ops": {"sha256": DIGEST}},
            "servers": {SERVER: {"keys": ["opz"], "subjects": ["alice"]}},
            "monitoring": {"keys": ["nobody"]},
        },
    ) == [
        f'{source}, field "servers.{SERVER}.keys[0]": "opz" is not a name in apiKeys',
        f'{source}, field "servers.{SERVER}.subjects": subjects need "jwt" to be configured',
        f'{source}, field "monitoring.keys[0]": "nobody" is not a name in apiKeys',
    ]
