"""Client authentication with bearer JWTs, in process: keys from a JWKS endpoint (served
in a thread) or from a PEM file, roles from a claim, and the 401s of bad tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from app_proxy import Deployment
from app_upstreams import IdentityProvider, serve_in_thread

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def idp() -> IdentityProvider:
    return IdentityProvider()


@pytest.fixture(scope="module")
def jwks_url(idp: IdentityProvider) -> Iterator[str]:
    with serve_in_thread(idp.jwks_app()) as url:
        yield f"{url}/certs"


def access_json(deployment: Deployment, idp: IdentityProvider, **key: Any) -> dict[str, Any]:
    return {
        "jwt": {
            "issuer": idp.issuer,
            "audience": idp.audience,
            "algorithms": ["RS256"],
            "rolesClaim": "realm_access.roles",
            "jwksRefetchSeconds": 0,
            **key,
        },
        "models": {deployment.models["seg"]: {"roles": ["radiologist"]}},
        "unlistedModels": "deny",
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def check_tokens(
    deployment: Deployment, tmp_path: Path, idp: IdentityProvider, access: dict[str, Any]
) -> None:
    seg = deployment.path("seg")
    radiologist = idp.mint(realm_access={"roles": ["radiologist"]})
    tokens = {
        "no role": idp.mint(),
        "expired": idp.mint(lifetime=-3600, realm_access={"roles": ["radiologist"]}),
        "wrong audience": idp.mint(aud="another-app"),
        "wrong issuer": idp.mint(iss="https://evil.test"),
        "not a jwt": "abc.def",
    }
    async with deployment.proxy(tmp_path, access=access) as proxy:
        ok = await proxy.client.get(seg, headers=bearer(radiologist))
        # A kid the JWKS does not hold (refetched, still absent); a PEM key has no kid.
        other_kid = idp.mint(kid="key-9", realm_access={"roles": ["radiologist"]})
        unknown_key = await proxy.client.get(seg, headers=bearer(other_kid))
        answers = {
            name: await proxy.client.get(seg, headers=bearer(token))
            for name, token in tokens.items()
        }
    assert ok.status_code == 200, ok.text
    assert unknown_key.status_code == (401 if "jwksUri" in access["jwt"] else 200)
    assert answers.pop("no role").status_code == 403
    for name, response in answers.items():
        assert response.status_code == 401, (name, response.text)
        assert response.json()["code"].startswith(("invalid", "expired", "unauth")), name
        assert "Bearer" in response.headers["WWW-Authenticate"]
    records = {record["status"] for record in proxy.audit_records()}
    assert records == {200, 401, 403}


async def test_tokens_checked_against_a_jwks(
    deployment: Deployment, tmp_path: Path, idp: IdentityProvider, jwks_url: str
) -> None:
    await check_tokens(deployment, tmp_path, idp, access_json(deployment, idp, jwksUri=jwks_url))


async def test_tokens_checked_against_a_public_key_file(
    deployment: Deployment, tmp_path: Path, idp: IdentityProvider
) -> None:
    pem = tmp_path / "idp.pem"
    pem.write_bytes(idp.public_pem())
    access = access_json(deployment, idp, publicKeyFile=str(pem))
    await check_tokens(deployment, tmp_path, idp, access)
