"""/health, /status (JSON and HTML), /openapi.json, and config reload through the real
SIGHUP handler, in process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import pytest
from app_proxy import Deployment, Proxy, new_uid

from model_proxy import __version__
from model_proxy.access import digest_of, new_api_key

pytestmark = pytest.mark.anyio

JSON = {"Accept": "application/json"}


async def test_health(deployment: Deployment, tmp_path: Path) -> None:
    async with deployment.proxy(tmp_path) as proxy:
        response = await proxy.client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": __version__}


async def test_status_probes_every_server_and_model(deployment: Deployment, tmp_path: Path) -> None:
    servers = deployment.servers_json()
    servers[new_uid()] = {"uri": "http://127.0.0.1:9/dicom-web", "isDefault": False}  # refused
    async with deployment.proxy(tmp_path, servers=servers) as proxy:
        report = await proxy.client.get("/status", headers=JSON)
        page = await proxy.client.get("/status", headers={"Accept": "text/html"})
    assert report.status_code == 200 and report.headers["cache-control"] == "no-store"
    body = report.json()
    assert set(body["servers"]) == set(servers)
    assert set(body["models"]) == set(deployment.models.values())
    up = {uid for uid, entry in body["servers"].items() if entry["ok"]}
    assert up == set(deployment.servers.values()), body["servers"]
    assert all(entry["ok"] for entry in body["models"].values()), body["models"]
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert deployment.servers["pacs"] in page.text and "down" in page.text


async def test_status_page_is_off_unless_asked(deployment: Deployment, tmp_path: Path) -> None:
    async with deployment.proxy(tmp_path, show_status_page=False) as proxy:
        response = await proxy.client.get("/status", headers=JSON)
    assert response.status_code == 404


async def test_openapi_document_lists_the_routes(deployment: Deployment, tmp_path: Path) -> None:
    async with deployment.proxy(tmp_path) as proxy:
        response = await proxy.client.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    paths = "\n".join(document["paths"])
    for family in ("segmentations", "annotations", "predictions"):
        assert family in paths or "{family}" in paths or "{task}" in paths, paths


async def wait_for(proxy: Proxy, condition: str, model: str) -> None:
    """Polls /status until ``model`` is (or is no longer) configured; a reload runs as
    a task started by the signal handler."""
    deadline = time.monotonic() + 30
    while True:
        models = (await proxy.client.get("/status", headers=JSON)).json()["models"]
        if (model in models) == (condition == "present"):
            return
        assert time.monotonic() < deadline, f"model {model} not {condition} after a reload"
        await asyncio.sleep(0.05)


async def test_sighup_reloads_the_config_and_refuses_a_broken_one(
    deployment: Deployment, tmp_path: Path
) -> None:
    added = new_uid()
    async with deployment.proxy(tmp_path) as proxy:
        # The lifespan put the proxy's SIGHUP handler in place (else SIGHUP would end pytest).
        assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        models = deployment.models_json()
        models[added] = deployment.model("/prediction", "prediction", ["/studies/series"])
        proxy.write_config(deployment.servers_json(), models)
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(proxy, "present", added)
        path = deployment.path("pred", "series").replace(deployment.models["pred"], added)
        assert (await proxy.client.get(path)).status_code == 200

        # A broken file is refused; the config in force stays.
        (proxy.config_dir / "models.json").write_text("{ not json")
        assert await proxy.reload() is False
        assert (await proxy.client.get(path)).status_code == 200

        # A model removed: its routes answer 404 at once.
        proxy.write_config(deployment.servers_json(), deployment.models_json())
        assert await proxy.reload() is True
        response = await proxy.client.get(path)
        assert response.status_code == 404 and response.json()["code"] == "unknown_model"


async def test_reload_takes_a_changed_access_json(deployment: Deployment, tmp_path: Path) -> None:
    old, new = new_api_key(), new_api_key()

    def access(key: str) -> dict[str, object]:
        return {"apiKeys": {"viewer": {"sha256": digest_of(key).hex()}}}

    path = deployment.path("pred")
    async with deployment.proxy(tmp_path, access=access(old)) as proxy:
        assert (await proxy.client.get(path, headers={"X-API-Key": old})).status_code == 200
        (proxy.config_dir / "access.json").write_text(json.dumps(access(new)))
        assert await proxy.reload() is True
        assert (await proxy.client.get(path, headers={"X-API-Key": old})).status_code == 401
        assert (await proxy.client.get(path, headers={"X-API-Key": new})).status_code == 200


async def test_changed_files_are_reloaded_when_watched(
    deployment: Deployment, tmp_path: Path
) -> None:
    added = new_uid()
    async with deployment.proxy(tmp_path, watch_config=0.05) as proxy:
        await asyncio.sleep(0)  # the watcher task takes its first look at the files
        models = deployment.models_json()
        models[added] = deployment.model("/prediction", "prediction", ["/studies"])
        proxy.write_config(deployment.servers_json(), models)
        await wait_for(proxy, "present", added)
