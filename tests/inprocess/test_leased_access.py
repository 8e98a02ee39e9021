"""access.json is part of the config state a request leases (runtime/reload.py): a
reload puts servers.json, models.json and access.json in force together or not at all;
new rules apply to the next request, never to one in flight; the JWKS keys fetched
before survive a reload that keeps the jwt settings."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from app_proxy import Deployment, new_uid, write_json
from app_upstreams import IdentityProvider, serve_in_thread
from test_flight_lease import GatedModel, eventually

from model_proxy.access import digest_of, new_api_key
from model_proxy.runtime.state import ProxyState

pytestmark = pytest.mark.anyio


def keyed(*keys: str) -> dict[str, Any]:
    return {"apiKeys": {f"key-{i}": {"sha256": digest_of(key).hex()} for i, key in enumerate(keys)}}


@pytest.fixture
def gated_model(model_url: str) -> Iterator[tuple[GatedModel, str]]:
    model = GatedModel(model_url)
    with serve_in_thread(model.app()) as url:
        yield model, url
    model.gate.set()


async def test_a_broken_access_json_keeps_the_whole_state(
    deployment: Deployment, tmp_path: Path
) -> None:
    key, new_key = new_api_key(), new_api_key()
    added = new_uid()
    models = deployment.models_json()
    models[added] = deployment.model("/prediction", "prediction", ["/studies/series"])
    added_path = deployment.path("pred", "series").replace(deployment.models["pred"], added)
    async with deployment.proxy(tmp_path, access=keyed(key)) as proxy:
        before: ProxyState = proxy.app.state.live.current
        # A good models.json and a broken access.json in one reload: neither is taken.
        proxy.write_config(deployment.servers_json(), models)
        write_json(proxy.config_dir / "access.json", {"apiKeys": {"x": {"sha256": "nope"}}})
        assert await proxy.reload() is False
        assert proxy.app.state.live.current is before
        unknown = await proxy.client.get(added_path, headers={"X-API-Key": key})
        assert unknown.status_code == 404 and unknown.json()["code"] == "unknown_model"
        assert (
            await proxy.client.get(deployment.path("pred"), headers={"X-API-Key": key})
        ).status_code == 200

        # Fixed: the new model and the new rules arrive together.
        write_json(proxy.config_dir / "access.json", keyed(new_key))
        assert await proxy.reload() is True
        assert (await proxy.client.get(added_path, headers={"X-API-Key": key})).status_code == 401
        assert (
            await proxy.client.get(added_path, headers={"X-API-Key": new_key})
        ).status_code == 200


async def test_new_rules_apply_to_the_next_request_not_to_one_in_flight(
    deployment: Deployment, tmp_path: Path, gated_model: tuple[GatedModel, str]
) -> None:
    model, url = gated_model
    seg = deployment.models["seg"]
    models = {seg: deployment.model("/segmentation", "segmentation", ["/studies/series"])}
    models[seg]["uri"] = f"{url}/segmentation"
    path = deployment.path("seg", level="series")
    old_key, new_key = new_api_key(), new_api_key()
    async with deployment.proxy(
        tmp_path, models=models, access=keyed(old_key), cache_max_bytes=0
    ) as proxy:
        first: ProxyState = proxy.app.state.live.current
        in_flight = asyncio.create_task(proxy.client.get(path, headers={"X-API-Key": old_key}))
        await eventually(lambda: model.calls == 1, "the in-flight request reaching the model")

        (proxy.config_dir / "access.json").write_text(json.dumps(keyed(new_key)))
        assert await proxy.reload() is True
        # The next request sees the new rules; the one in flight keeps its state's.
        assert (
            await proxy.client.get("/status", headers={"X-API-Key": old_key})
        ).status_code == 401
        assert (
            await proxy.client.get("/status", headers={"X-API-Key": new_key})
        ).status_code == 200
        assert first.access.policy is not None
        assert proxy.app.state.live.retired_count == 1

        model.gate.set()
        answer = await in_flight
        assert answer.status_code == 200, answer.text
        await eventually(lambda: proxy.app.state.live.retired_count == 0, "the old state closing")
        assert (await proxy.client.get(path, headers={"X-API-Key": old_key})).status_code == 401
        assert (await proxy.client.get(path, headers={"X-API-Key": new_key})).status_code == 200


async def test_a_reload_keeps_the_fetched_jwks_keys(deployment: Deployment, tmp_path: Path) -> None:
    idp = IdentityProvider()
    with serve_in_thread(idp.jwks_app()) as url:
        jwt = {"jwksUri": f"{url}/certs", "issuer": idp.issuer, "audience": idp.audience}
        token = {"Authorization": f"Bearer {idp.mint()}"}
        path = deployment.path("pred")
        async with deployment.proxy(tmp_path, access={"jwt": jwt}) as proxy:
            assert (await proxy.client.get(path, headers=token)).status_code == 200
            assert idp.jwks_fetches == 1
            # Other rules, the same jwt settings: the keys fetched before are used.
            key = new_api_key()
            write_json(proxy.config_dir / "access.json", {"jwt": jwt} | keyed(key))
            assert await proxy.reload() is True
            assert (await proxy.client.get(path, headers=token)).status_code == 200
            assert (await proxy.client.get(path, headers={"X-API-Key": key})).status_code == 200
            assert idp.jwks_fetches == 1
            # Changed jwt settings: a cache of their own, fetched afresh.
            write_json(proxy.config_dir / "access.json", {"jwt": jwt | {"leewaySeconds": 5}})
            assert await proxy.reload() is True
            assert (await proxy.client.get(path, headers=token)).status_code == 200
            assert idp.jwks_fetches == 2
