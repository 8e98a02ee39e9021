"""The /status page in HTML: names and traffic drawn from the same report as the JSON,
a meta refresh that ``?refresh=`` changes or turns off, no script under the default CSP,
and a clear 400 for a bad ``?refresh=`` (routes/status.py, routes/status_page.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from app_proxy import Deployment

pytestmark = pytest.mark.anyio

HTML = {"Accept": "text/html"}


async def test_the_page_shows_names_and_the_traffic_of_the_json(
    deployment: Deployment, tmp_path: Path
) -> None:
    servers = deployment.servers_json()
    servers[deployment.servers["folder"]]["name"] = "Local <folder>"
    models = deployment.models_json()
    models[deployment.models["seg"]]["name"] = "Lung segmenter"
    async with deployment.proxy(tmp_path, servers=servers, models=models) as proxy:
        assert (await proxy.client.get(deployment.path("seg"))).status_code == 200
        report = (await proxy.client.get("/status", headers={"Accept": "application/json"})).json()
        page = await proxy.client.get("/status", headers=HTML)
    assert page.status_code == 200
    text = page.text
    seg = report["models"][deployment.models["seg"]]
    assert seg["name"] == "Lung segmenter" and seg["traffic"]["5m"]["requests"] == 1
    card = text.split(f'id="model-{deployment.models["seg"]}"', 1)[1].split("</section>", 1)[0]
    assert "Lung segmenter" in card and deployment.models["seg"] in card
    five = re.search(r'<tr data-window="5m">(.*?)</tr>', card)
    assert five is not None, card
    p50 = seg["traffic"]["5m"]["p50Ms"]
    assert f'<td class="num p50">{p50:.0f} ms</td>' in five.group(1) or p50 >= 1000
    # Escaped, marked as the default; an unnamed entry shows its UUID as its title.
    folder = text.split(f'id="server-{deployment.servers["folder"]}"', 1)[1]
    assert "Local &lt;folder&gt;" in folder.split("</section>", 1)[0]
    assert '<span class="tag">default</span>' in folder.split("</section>", 1)[0]
    unnamed = deployment.models["pred"]
    assert f"<code>{unnamed}</code></h3>" in text
    assert "<script" not in text
    assert "script-src" not in page.headers["content-security-policy"]
    assert '<meta http-equiv="refresh" content="15">' in text


async def test_refresh_can_be_changed_or_turned_off(deployment: Deployment, tmp_path: Path) -> None:
    async with deployment.proxy(tmp_path) as proxy:
        slow = await proxy.client.get("/status?refresh=60", headers=HTML)
        never = await proxy.client.get("/status?refresh=0", headers=HTML)
        bad = await proxy.client.get("/status?refresh=soon", headers=HTML)
        too_long = await proxy.client.get("/status?refresh=86400", headers=HTML)
    assert '<meta http-equiv="refresh" content="60">' in slow.text
    assert "refresh" not in never.text.split("</head>", 1)[0]
    for answer, shown in ((bad, "'soon'"), (too_long, "'86400'")):
        assert answer.status_code == 400
        body = answer.json()
        assert body["code"] == "bad_request"
        assert body["message"] == (
            "?refresh= takes whole seconds from 0 (no auto-refresh) to 3600, got " + shown
        )
