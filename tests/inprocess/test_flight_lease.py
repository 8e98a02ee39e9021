"""A coalesced model call holds its own lease on the config state it runs with.

Viewer A starts the call; the config is reloaded; viewer B, on the new state, joins
the same call; A goes away. The old state's last request has ended, but the call
still uses its model client: the state must stay open until the call ends, and B must
get the whole result (runtime/reload.py, routes/inference.py).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from app_proxy import Deployment, Proxy, new_uid
from app_upstreams import serve_in_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from model_proxy.runtime.state import ProxyState

pytestmark = pytest.mark.anyio


class GatedModel:
    """Forwards each POST to the example model once ``gate`` is set; counts calls."""

    def __init__(self, model_url: str) -> None:
        self.model_url = model_url
        self.gate = threading.Event()
        self.calls = 0

    def app(self) -> Starlette:
        async def segment(request: Request) -> Response:
            body = await request.body()
            self.calls += 1
            while not self.gate.is_set():
                await asyncio.sleep(0.01)
            async with httpx.AsyncClient(timeout=60) as client:
                answer = await client.post(
                    f"{self.model_url}/segmentation",
                    content=body,
                    headers={"Content-Type": request.headers["content-type"]},
                )
            return Response(answer.content, answer.status_code, media_type="application/json")

        return Starlette(routes=[Route("/segmentation", segment, methods=["POST"])])


@pytest.fixture
def gated_model(model_url: str) -> Iterator[tuple[GatedModel, str]]:
    model = GatedModel(model_url)
    with serve_in_thread(model.app()) as url:
        yield model, url
    model.gate.set()


async def eventually(condition: object, what: str) -> None:
    assert callable(condition)
    for _ in range(3000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_coalesced_call_keeps_its_state_open_after_its_first_viewer_left(
    deployment: Deployment, tmp_path: Path, gated_model: tuple[GatedModel, str]
) -> None:
    model, url = gated_model
    seg = deployment.models["seg"]
    models = {seg: deployment.model("/segmentation", "segmentation", ["/studies/series"])}
    models[seg]["uri"] = f"{url}/segmentation"
    path = deployment.path("seg", level="series")

    expected = await reference_result(deployment, tmp_path, path)
    async with deployment.proxy(tmp_path, models=models) as proxy:
        first_state: ProxyState = proxy.app.state.live.current
        viewer_a = asyncio.create_task(proxy.client.get(path))
        await eventually(lambda: model.calls == 1, "the model call of viewer A")

        # A reload (another model added) retires A's state; B arrives on the new one.
        changed = {**models, new_uid(): deployment.model("/prediction", "prediction", ["/studies"])}
        proxy.write_config(deployment.servers_json(), changed)
        assert await proxy.reload()
        assert proxy.app.state.live.current is not first_state
        viewer_b = asyncio.create_task(proxy.client.get(path))
        await eventually(lambda: readers(proxy) == 2, "viewer B joining A's model call")

        viewer_a.cancel()  # A goes away: its request's lease on the old state ends
        await asyncio.gather(viewer_a, return_exceptions=True)
        await eventually(lambda: readers(proxy) == 1, "viewer A leaving the call")
        assert not first_state_closed(first_state), "the old state closed under the call"

        model.gate.set()
        answer = await viewer_b
        assert answer.status_code == 200, answer.text
        assert answer.content == expected
        assert model.calls == 1  # one model call served both viewers
        await eventually(lambda: first_state_closed(first_state), "the old state closing")


def readers(proxy: Proxy) -> int:
    flights = proxy.app.state.live.current.result_cache.flights
    return sum(flight.readers for flight in flights._flights.values())


def first_state_closed(state: ProxyState) -> bool:
    return all(model._client.is_closed for model in state.models.values())


async def reference_result(deployment: Deployment, tmp_path: Path, path: str) -> bytes:
    """The same request through a proxy calling the example model directly."""
    (tmp_path / "reference").mkdir()
    async with deployment.proxy(tmp_path / "reference", cache_max_bytes=0) as reference:
        answer = await reference.client.get(path)
    assert answer.status_code == 200, answer.text
    return answer.content
