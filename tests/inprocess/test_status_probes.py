"""``/status`` probes each upstream once per round, however many callers ask at once,
reuses a fresh round for ``--status-cache`` seconds, and access.json's ``monitoring``
rule limits it to the callers it lists (routes/status.py, upstream/probe.py)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from app_proxy import Deployment, new_uid
from app_upstreams import serve_in_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from test_flight_lease import eventually

from model_proxy.access import digest_of, new_api_key
from model_proxy.runtime.state import ProxyState

pytestmark = pytest.mark.anyio

JSON = {"Accept": "application/json"}


class CountingUpstream:
    """A PACS status URL and a model status URL on one loopback server; each counts its
    GETs and answers once ``gate`` is set."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.gate = threading.Event()

    def app(self) -> Starlette:
        async def status(request: Request) -> Response:
            self.hits[request.url.path] += 1
            while not self.gate.is_set():
                await asyncio.sleep(0.01)
            return JSONResponse({"ok": True})

        return Starlette(routes=[Route("/pacs-status", status), Route("/model-status", status)])


@pytest.fixture
def upstream() -> Iterator[tuple[CountingUpstream, str]]:
    counting = CountingUpstream()
    with serve_in_thread(counting.app()) as url:
        yield counting, url
    counting.gate.set()


def counted_config(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    servers = {
        new_uid(): {
            "uri": f"{url}/dicom-web",
            "statusUri": f"{url}/pacs-status",
            "isDefault": True,
        }
    }
    models = {
        new_uid(): {
            "uri": f"{url}/predict",
            "statusUri": f"{url}/model-status",
            "task": "prediction",
            "supports": ["/studies"],
        }
    }
    return servers, models


async def test_concurrent_status_calls_share_one_probe_round(
    deployment: Deployment, tmp_path: Path, upstream: tuple[CountingUpstream, str]
) -> None:
    counting, url = upstream
    servers, models = counted_config(url)
    callers = 20
    # No cache: what keeps the upstreams at one probe each is the single round in flight.
    async with deployment.proxy(
        tmp_path, servers=servers, models=models, status_cache_seconds=0
    ) as proxy:
        state: ProxyState = proxy.app.state.live.current
        calls = [
            asyncio.create_task(proxy.client.get("/status", headers=JSON)) for _ in range(callers)
        ]
        await eventually(lambda: state.probe_rounds.waiting == callers, "every call waiting")
        await eventually(lambda: len(counting.hits) == 2, "the round's probes arriving")
        assert counting.hits == {"/pacs-status": 1, "/model-status": 1}
        counting.gate.set()
        answers = await asyncio.gather(*calls)
        assert [answer.status_code for answer in answers] == [200] * callers
        assert all(answer.json()["models"][next(iter(models))]["ok"] for answer in answers)
        assert counting.hits == {"/pacs-status": 1, "/model-status": 1}

        # The round is over and the cache is off: the next call probes again.
        assert (await proxy.client.get("/status", headers=JSON)).status_code == 200
        assert counting.hits == {"/pacs-status": 2, "/model-status": 2}


async def test_status_reuses_a_fresh_round(
    deployment: Deployment, tmp_path: Path, upstream: tuple[CountingUpstream, str]
) -> None:
    counting, url = upstream
    counting.gate.set()
    servers, models = counted_config(url)
    async with deployment.proxy(
        tmp_path, servers=servers, models=models, status_cache_seconds=3600
    ) as proxy:
        first = await proxy.client.get("/status", headers=JSON)
        page = await proxy.client.get("/status", headers={"Accept": "text/html"})
        second = await proxy.client.get("/status", headers=JSON)
    assert first.status_code == second.status_code == page.status_code == 200
    assert counting.hits == {"/pacs-status": 1, "/model-status": 1}
    assert second.json()["process"]["probedSecondsAgo"] >= 0
    assert "Probed" in page.text


async def test_monitoring_rule_limits_status_to_the_callers_it_lists(
    deployment: Deployment, tmp_path: Path
) -> None:
    keys = {name: new_api_key() for name in ("ops", "admin", "viewer")}
    access = {
        "apiKeys": {
            "ops": {"sha256": digest_of(keys["ops"]).hex()},
            "admin": {"sha256": digest_of(keys["admin"]).hex(), "roles": ["administrator"]},
            "viewer": {"sha256": digest_of(keys["viewer"]).hex(), "roles": ["radiologist"]},
        },
        "monitoring": {"keys": ["ops"], "roles": ["administrator"]},
    }
    async with deployment.proxy(tmp_path, access=access) as proxy:

        async def status(key: str | None) -> Any:
            headers = JSON | ({"X-API-Key": key} if key else {})
            return await proxy.client.get("/status", headers=headers)

        anonymous, viewer = await status(None), await status(keys["viewer"])
        ops, admin = await status(keys["ops"]), await status(keys["admin"])
        # The viewer may still run models: monitoring limits /status only.
        inference = await proxy.client.get(
            deployment.path("pred"), headers={"X-API-Key": keys["viewer"]}
        )
    assert anonymous.status_code == 401
    assert viewer.status_code == 403
    assert viewer.json() == {
        "message": 'You have no access to /status (access.json grants it under "monitoring")',
        "code": "no_monitoring_access",
    }
    assert ops.status_code == admin.status_code == 200
    assert inference.status_code == 200
