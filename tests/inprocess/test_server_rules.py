"""access.json ``servers`` rules: who may make the proxy query which PACS of
servers.json, with API keys and bearer JWTs; a server without a rule stays open."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from app_proxy import Deployment
from app_upstreams import IdentityProvider, serve_in_thread

from model_proxy.access import digest_of, new_api_key

pytestmark = pytest.mark.anyio


async def test_server_rules_with_api_keys(deployment: Deployment, tmp_path: Path) -> None:
    keys = {name: new_api_key() for name in ("viewer", "batch")}
    folder, pacs = deployment.servers["folder"], deployment.servers["pacs"]
    access = {
        "apiKeys": {
            "viewer": {"sha256": digest_of(keys["viewer"]).hex(), "roles": ["radiologist"]},
            "batch": {"sha256": digest_of(keys["batch"]).hex()},
        },
        # The folder (the default server) for radiologists only; the PACS has no rule.
        "servers": {folder: {"roles": ["radiologist"]}},
    }
    path = deployment.path("pred", "series")
    async with deployment.proxy(tmp_path, access=access) as proxy:

        async def get(key: str, query: str = "") -> Any:
            return await proxy.client.get(path + query, headers={"X-API-Key": keys[key]})

        viewer_default = await get("viewer")
        viewer_pacs = await get("viewer", f"?server={pacs}")
        batch_default = await get("batch")
        batch_folder = await get("batch", f"?server={folder}")
        batch_pacs = await get("batch", f"?server={pacs}")
        batch_unknown = await get("batch", "?server=00000000-0000-0000-0000-000000000000")
    assert viewer_default.status_code == viewer_pacs.status_code == 200
    assert batch_pacs.status_code == 200, batch_pacs.text
    assert batch_default.status_code == batch_folder.status_code == 403
    assert batch_default.json() == {
        "message": f"You have no access to the default server {folder};"
        " choose one you may use with ?server=<uuid>",
        "code": "no_server_access",
    }
    assert batch_folder.json() == {
        "message": f"You have no access to server {folder}",
        "code": "no_server_access",
    }
    assert batch_unknown.status_code == 404
    records = {(r["caller"], r["status"], r.get("code")) for r in proxy.audit_records()}
    assert ("api-key:batch", 403, "no_server_access") in records


async def test_server_rules_with_bearer_tokens(deployment: Deployment, tmp_path: Path) -> None:
    idp = IdentityProvider()
    pacs = deployment.servers["pacs"]
    with serve_in_thread(idp.jwks_app()) as url:
        access = {
            "jwt": {
                "jwksUri": f"{url}/certs",
                "issuer": idp.issuer,
                "audience": idp.audience,
                "rolesClaim": "realm_access.roles",
            },
            "servers": {pacs: {"subjects": ["alice"], "roles": ["pacs-reader"]}},
        }
        path = deployment.path("pred", "series") + f"?server={pacs}"
        tokens = {
            "alice": idp.mint(sub="alice"),
            "reader": idp.mint(sub="carol", realm_access={"roles": ["pacs-reader"]}),
            "bob": idp.mint(sub="bob", realm_access={"roles": ["radiologist"]}),
        }
        async with deployment.proxy(tmp_path, access=access) as proxy:
            answers = {
                name: await proxy.client.get(path, headers={"Authorization": f"Bearer {token}"})
                for name, token in tokens.items()
            }
            # Bob may still use the default server, which has no rule.
            default = await proxy.client.get(
                deployment.path("pred", "series"),
                headers={"Authorization": f"Bearer {tokens['bob']}"},
            )
    assert answers["alice"].status_code == answers["reader"].status_code == 200
    assert answers["bob"].status_code == 403
    assert answers["bob"].json()["code"] == "no_server_access"
    assert default.status_code == 200
