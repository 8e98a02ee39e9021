"""Client authentication to the proxy: API keys, bearer JWTs checked against a real
JWKS endpoint, per-model allow-lists with the original's 403, and /status and
/health with auth on. Real Orthanc, example model, IdP double and proxy on loopback."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
from faults import closed_port_url
from guarded_deployment import ALL_LEVELS, Guarded
from harness import (
    ExampleModel,
    OrthancServer,
    ProxyFactory,
    ProxyProcess,
    model_entry,
    new_uid,
)
from harness import server_entry as orthanc_entry
from identity import ISSUER, identity_provider, rsa_key, unsigned_token

from model_proxy.access import digest_of, new_api_key
from model_proxy.sample_data import SampleStudy

NO_ACCESS = {"message": "You have no access to this model", "code": "no_access"}
CHALLENGE = 'Bearer realm="model-proxy", ApiKey realm="model-proxy"'


def expect_401(response_status: int, body: dict[str, str], code: str) -> str:
    assert response_status == 401, body
    assert set(body) == {"message", "code"} and body["code"] == code, body
    return body["message"]


# --- who gets in ----------------------------------------------------------------------


def test_no_credentials_is_401_with_a_challenge(guarded: Guarded) -> None:
    response = guarded.get(guarded.instance_path("seg"))
    message = expect_401(response.status_code, response.json(), "unauthenticated")
    assert response.headers["WWW-Authenticate"] == CHALLENGE
    assert "X-API-Key" in message and "bearer token" in message
    # An unknown model is not revealed to an unauthenticated caller either.
    unknown = guarded.get(f"/segmentations/{new_uid()}/studies/1.2.3")
    assert unknown.status_code == 401


def test_health_stays_open_and_status_needs_a_caller(guarded: Guarded) -> None:
    assert guarded.get("/health").status_code == 200
    assert guarded.get("/status").status_code == 401
    status = guarded.get(
        "/status", headers={**guarded.with_key("batch"), "Accept": "application/json"}
    )
    assert status.status_code == 200
    assert set(status.json()["servers"]) == set(guarded.servers.values())


def test_api_key_in_either_header_runs_the_model(guarded: Guarded) -> None:
    response = guarded.get(guarded.instance_path("seg"), headers=guarded.with_key("viewer"))
    assert response.status_code == 200, response.text
    assert guarded.study.study_uid in response.json()
    response = guarded.get(
        guarded.instance_path("pred", "predictions"),
        headers={"Authorization": f"ApiKey {guarded.keys['batch']}"},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"X-API-Key": new_api_key()}, "invalid_api_key"),
        ({"Authorization": f"ApiKey {new_api_key()}"}, "invalid_api_key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "unsupported_credentials"),
        ({"X-API-Key": "k", "Authorization": "Bearer t"}, "ambiguous_credentials"),
    ],
)
def test_wrong_or_unsupported_credentials_are_401(
    guarded: Guarded, headers: dict[str, str], code: str
) -> None:
    response = guarded.get(guarded.instance_path("seg"), headers=headers)
    expect_401(response.status_code, response.json(), code)
    assert response.headers["WWW-Authenticate"] == CHALLENGE


def test_rs256_and_es256_tokens_from_the_jwks(guarded: Guarded) -> None:
    radiologist = guarded.idp.mint(guarded.rsa, subject="bob", roles=["radiologist"])
    response = guarded.get(guarded.instance_path("seg"), headers=guarded.with_token(radiologist))
    assert response.status_code == 200, response.text
    alice = guarded.idp.mint(guarded.ec, subject="alice")
    response = guarded.get(
        guarded.instance_path("pred", "predictions"), headers=guarded.with_token(alice)
    )
    assert response.status_code == 200, response.text


def _hs256_with_public_key(guarded: Guarded) -> str:
    # The classic algorithm confusion: HMAC keyed with the published RSA key.
    header = {"alg": "HS256", "typ": "JWT", "kid": guarded.rsa.kid}
    payload = {"iss": ISSUER, "aud": "model-proxy", "sub": "mallory", "exp": 2**31}

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(guarded.rsa.public_pem(), signing_input.encode(), hashlib.sha256)
    return f"{signing_input}.{b64(signature.digest())}"


def _tampered(guarded: Guarded) -> str:
    header, payload, signature = guarded.idp.mint(guarded.rsa, roles=["radiologist"]).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


BAD_TOKENS: dict[str, tuple[Callable[[Guarded], str], str]] = {
    "wrong issuer": (
        lambda g: g.idp.mint(g.rsa, issuer="https://evil.test", roles=["radiologist"]),
        "another issuer",
    ),
    "wrong audience": (
        lambda g: g.idp.mint(g.rsa, audience="another-app", roles=["radiologist"]),
        "another audience",
    ),
    "expired": (lambda g: g.idp.mint(g.rsa, expires_in=-600), "expired"),
    "alg none": (
        lambda g: unsigned_token({"iss": ISSUER, "aud": "model-proxy", "sub": "x", "exp": 2**31}),
        "'none'",
    ),
    "HS256 keyed with the public key": (_hs256_with_public_key, "'HS256'"),
    "unknown kid": (lambda g: g.idp.mint(rsa_key("rogue")), "does not publish"),
    "known kid, other key": (
        lambda g: g.idp.mint(rsa_key("rogue"), kid=g.rsa.kid),
        "signature does not verify",
    ),
    "tampered claims": (_tampered, "signature does not verify"),
    "not a JWT": (lambda g: "not-a-token", "not a JWT"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_tokens_are_401_invalid_token(guarded: Guarded, case: str) -> None:
    make, fragment = BAD_TOKENS[case]
    response = guarded.get(guarded.instance_path("seg"), headers=guarded.with_token(make(guarded)))
    message = expect_401(response.status_code, response.json(), "invalid_token")
    assert fragment in message
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_a_rotated_key_is_fetched_when_a_token_names_it(guarded: Guarded) -> None:
    rotated = rsa_key("rsa-2")
    guarded.idp.publish(guarded.rsa, guarded.ec, rotated)
    try:
        before = guarded.idp.fetches
        token = guarded.idp.mint(rotated, roles=["radiologist"])
        response = guarded.get(guarded.instance_path("seg"), headers=guarded.with_token(token))
        assert response.status_code == 200, response.text
        assert guarded.idp.fetches == before + 1
    finally:
        guarded.idp.publish(guarded.rsa, guarded.ec)


# --- which models ---------------------------------------------------------------------


def test_callers_outside_a_models_rule_get_the_originals_403(guarded: Guarded) -> None:
    alice_without_roles = guarded.with_token(guarded.idp.mint(guarded.ec, subject="alice"))
    refused = [
        (guarded.instance_path("pred", "predictions"), guarded.with_key("viewer")),
        (guarded.instance_path("seg"), guarded.with_key("batch")),
        (guarded.instance_path("seg"), alice_without_roles),
        # "unlistedModels": "deny"
        (guarded.instance_path("ann", "annotations"), guarded.with_key("viewer")),
    ]
    for path, headers in refused:
        response = guarded.get(path, headers=headers)
        assert response.status_code == 403, response.text
        assert response.json() == NO_ACCESS


def test_a_server_rule_limits_who_may_query_that_pacs(guarded: Guarded) -> None:
    restricted = f"?server={guarded.servers['restricted']}"
    pred = guarded.instance_path("pred", "predictions") + restricted
    alice = guarded.with_token(guarded.idp.mint(guarded.rsa, subject="alice"))
    bob = guarded.with_token(guarded.idp.mint(guarded.rsa, subject="bob", roles=["radiologist"]))
    # Listed by the rule: the real Orthanc behind it answers.
    assert guarded.get(pred, headers=guarded.with_key("batch")).status_code == 200
    assert guarded.get(pred, headers=alice).status_code == 200
    # Allowed on the model, not on that server.
    seg = guarded.instance_path("seg") + restricted
    for headers in (guarded.with_key("viewer"), bob):
        response = guarded.get(seg, headers=headers)
        assert response.status_code == 403, response.text
        assert response.json() == {
            "message": f"You have no access to server {guarded.servers['restricted']}",
            "code": "no_server_access",
        }
        # The same caller on the default server, which has no rule.
        assert guarded.get(guarded.instance_path("seg"), headers=headers).status_code == 200


def test_403_comes_before_any_check_of_the_request(guarded: Guarded) -> None:
    # A caller without access learns nothing about the model's task or levels.
    path = f"/segmentations/{guarded.models['pred']}/studies/not-a-uid"
    response = guarded.get(path, headers=guarded.with_key("viewer"))
    assert response.status_code == 403 and response.json() == NO_ACCESS


# --- JWKS and key files, each on a proxy of its own ------------------------------------


def _start_with_access(
    start_proxy: ProxyFactory,
    tmp_path: Path,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    access: Mapping[str, object],
) -> tuple[ProxyProcess, str]:
    """A proxy with one server, one segmentation model and ``access``: (proxy, model id)."""
    model_id = new_uid()
    (tmp_path / "access.json").write_text(json.dumps(access))
    proxy = start_proxy(
        {new_uid(): orthanc_entry(orthanc)},
        {model_id: model_entry(example_model, "/segmentation", "segmentation", ALL_LEVELS)},
        config_dir=tmp_path,
    )
    return proxy, model_id


def _instance_path(study: SampleStudy, model_id: str) -> str:
    series = study.series[0]
    return (
        f"/segmentations/{model_id}/studies/{study.study_uid}"
        f"/series/{series.series_uid}/instances/{series.sop_uids[0]}"
    )


def _jwt_settings(jwks_uri: str, **extra: object) -> dict[str, object]:
    return {"jwksUri": jwks_uri, "issuer": ISSUER, "audience": "model-proxy", **extra}


def test_unknown_kids_refetch_the_jwks_at_most_once_per_interval(
    start_proxy: ProxyFactory,
    tmp_path: Path,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
) -> None:
    with identity_provider() as idp:
        known = rsa_key("known")
        idp.publish(known)
        access = {"jwt": _jwt_settings(idp.jwks_url, jwksRefetchSeconds=3600)}
        proxy, model_id = _start_with_access(start_proxy, tmp_path, orthanc, example_model, access)
        path = _instance_path(sample_study, model_id)
        with proxy.client() as client:
            ok = client.get(path, headers={"Authorization": f"Bearer {idp.mint(known)}"})
            assert ok.status_code == 200, ok.text
            for index in range(5):
                forged = idp.mint(rsa_key(f"made-up-{index}"))
                response = client.get(path, headers={"Authorization": f"Bearer {forged}"})
                assert response.status_code == 401
                assert "does not publish" in response.json()["message"]
        assert idp.fetches == 1


def test_jwks_down_is_502_naming_it_and_api_keys_still_work(
    start_proxy: ProxyFactory,
    tmp_path: Path,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
) -> None:
    down = closed_port_url()
    key = new_api_key()
    access = {
        "apiKeys": {"ops": {"sha256": digest_of(key).hex()}},
        "jwt": _jwt_settings(f"{down}/certs"),
    }
    proxy, model_id = _start_with_access(start_proxy, tmp_path, orthanc, example_model, access)
    path = _instance_path(sample_study, model_id)
    with identity_provider() as idp:
        token = idp.mint(rsa_key("k"))
    with proxy.client() as client:
        response = client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 502, response.text
        body = response.json()
        assert body["code"] == "jwks_unavailable"
        assert f"JWKS {down.removeprefix('http://')}" in body["message"]
        assert client.get(path, headers={"X-API-Key": key}).status_code == 200


def test_a_pem_public_key_instead_of_a_jwks(
    start_proxy: ProxyFactory,
    tmp_path: Path,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
) -> None:
    signer, stranger = rsa_key("any"), rsa_key("any")
    (tmp_path / "idp.pem").write_bytes(signer.public_pem())
    access = {
        "jwt": {"publicKeyFile": "idp.pem", "issuer": ISSUER, "audience": ["x", "model-proxy"]}
    }
    proxy, model_id = _start_with_access(start_proxy, tmp_path, orthanc, example_model, access)
    path = _instance_path(sample_study, model_id)
    with identity_provider() as idp, proxy.client() as client:
        good = client.get(path, headers={"Authorization": f"Bearer {idp.mint(signer)}"})
        assert good.status_code == 200, good.text
        bad = client.get(path, headers={"Authorization": f"Bearer {idp.mint(stranger)}"})
        assert bad.status_code == 401
        assert "signature does not verify" in bad.json()["message"]
