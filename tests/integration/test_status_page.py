"""The status page an operator watches (issue 13, item 4), against real traffic: the
proxy as a process, the real Orthanc and example model, a model that cannot be reached.
The JSON's figures follow the requests sent; the token of a token-auth PACS shows its
expiry, then its failing refresh; headless Chromium draws the names, rates and
latencies at desktop and phone widths without horizontal scrolling.

Screenshots go to the test's folder, and to ``$STATUS_SCREENSHOT_DIR`` when it is set
(``scripts/status-screenshots.sh`` refreshes docs/images/ that way).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from auth_setup import AuthSetupFactory, assert_segmentation
from devtools import headless_chromium
from faults import closed_port_url
from harness import (
    ExampleModel,
    OrthancServer,
    ProxyFactory,
    ProxyProcess,
    model_entry,
    new_uid,
    server_entry,
)
from token_gateway import Gateway
from token_server import TokenServer

from model_proxy.sample_data import SampleStudy

pytestmark = pytest.mark.integration

ALL_LEVELS = ["/studies", "/studies/series", "/studies/series/instances"]
STATUS_ON = {"ZHIVA_SHOW_STATUS_PAGE": "true"}
JSON = {"Accept": "application/json"}


@dataclass
class Watched:
    """A proxy with named and unnamed entries, and the traffic sent through it."""

    proxy: ProxyProcess
    ids: dict[str, str]
    study: SampleStudy

    def path(self, model: str, series: int = 0, family: str = "segmentations") -> str:
        chosen = self.study.series[series]
        return (
            f"/{family}/{self.ids[model]}/studies/{self.study.study_uid}/series/{chosen.series_uid}"
        )

    def report(self) -> dict[str, Any]:
        with self.proxy.client() as client:
            response = client.get("/status", headers=JSON)
        assert response.status_code == 200, response.text
        report: dict[str, Any] = response.json()
        return report


def start_watched(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    orthanc_basic_auth: OrthancServer,
    model: ExampleModel,
    study: SampleStudy,
) -> Watched:
    ids = {name: new_uid() for name in ("main", "research", "down", "lungs", "nodules", "broken")}
    servers = {
        ids["main"]: server_entry(orthanc, name="Main PACS"),
        ids["research"]: server_entry(orthanc_basic_auth, isDefault=False, name="Research PACS"),
        ids["down"]: {"uri": f"{closed_port_url()}/dicom-web"},  # no name: the UUID shows
    }
    models = {
        ids["lungs"]: model_entry(
            model, "/segmentation", "segmentation", ALL_LEVELS, name="Lung segmenter"
        ),
        ids["nodules"]: model_entry(
            model, "/annotation", "annotation", ALL_LEVELS, name="Nodule finder"
        ),
        ids["broken"]: {
            "uri": f"{closed_port_url()}/predict",
            "task": "prediction",
            "supports": ["/studies/series"],
            "name": "Unreachable model",
        },
    }
    proxy = start_proxy(servers, models, env=STATUS_ON)
    return Watched(proxy, ids, study)


def send_traffic(watched: Watched) -> None:
    """Two lung series (a miss each), one of them again (a hit), a nodule series, and
    one request to the unreachable model (a 502)."""
    with watched.proxy.client() as client:
        for path in (
            watched.path("lungs", 0),
            watched.path("lungs", 1),
            watched.path("lungs", 1),
            watched.path("nodules", 1, "annotations"),
        ):
            response = client.get(path)
            assert response.status_code == 200, response.text
        failed = client.get(watched.path("broken", 1, "predictions"))
        assert failed.status_code == 502, failed.text


def test_the_json_reports_the_traffic_it_saw(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    orthanc_basic_auth: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
) -> None:
    watched = start_watched(start_proxy, orthanc, orthanc_basic_auth, example_model, sample_study)
    before = watched.report()
    assert before["models"][watched.ids["lungs"]]["traffic"]["5m"]["requests"] == 0
    send_traffic(watched)
    report = watched.report()
    ids = watched.ids

    servers, models = report["servers"], report["models"]
    assert servers[ids["main"]]["name"] == "Main PACS" and servers[ids["main"]]["isDefault"]
    assert servers[ids["research"]]["name"] == "Research PACS"
    assert not servers[ids["research"]]["isDefault"]
    assert servers[ids["down"]]["name"] is None and not servers[ids["down"]]["ok"]
    assert "token" not in servers[ids["main"]]  # no token auth

    lungs = models[ids["lungs"]]
    assert lungs["name"] == "Lung segmenter"
    for window in ("5m", "60m"):
        figures = lungs["traffic"][window]
        assert (figures["requests"], figures["errors"], figures["errorRate"]) == (3, 0, 0.0)
        assert (figures["cacheLookups"], figures["cacheHits"]) == (3, 1)
        assert 0 < figures["p50Ms"] <= figures["p95Ms"]
        assert figures["requestsPerMinute"] > 0
    assert "lastError" not in lungs
    assert models[ids["nodules"]]["traffic"]["5m"]["requests"] == 1

    broken = models[ids["broken"]]
    figures = broken["traffic"]["5m"]
    assert (figures["requests"], figures["errors"], figures["errorRate"]) == (1, 1, 1.0)
    assert figures["p50Ms"] is None and figures["p95Ms"] is None  # nothing was answered
    last = broken["lastError"]
    assert last["message"].startswith(f"model {ids['broken'][:8]}"), last
    age = dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(last["at"])
    assert dt.timedelta(0) <= age < dt.timedelta(minutes=5), last
    assert broken["breaker"]["failures"] == 1

    cache = report["cache"]
    assert cache["enabled"] and cache["5m"]["hits"] == 1
    assert cache["5m"]["lookups"] == sum(
        entry["traffic"]["5m"]["cacheLookups"] for entry in models.values()
    )
    capacity = report["capacity"]
    assert capacity["inferencesMax"] == 32 and capacity["memoryBudgetBytes"] == 512 * 1024**2
    process = report["process"]
    assert process["version"] and process["uptimeSeconds"] >= 0
    assert dt.datetime.fromisoformat(process["startedAt"]) <= dt.datetime.now(dt.UTC)
    # Never a patient's study or series UID, never a password.
    text = json.dumps(report)
    assert sample_study.study_uid not in text
    assert all(series.series_uid not in text for series in sample_study.series)
    assert orthanc_basic_auth.auth is not None and orthanc_basic_auth.auth[1] not in text


def test_a_token_pacs_shows_its_expiry_then_its_failing_refresh(
    auth_setup: AuthSetupFactory,
    token_pacs: Gateway,
    token_server: TokenServer,
    sample_study: SampleStudy,
) -> None:
    entry = token_pacs.server_entry("token")
    setup = auth_setup(entry)
    assert_segmentation(setup.infer(), sample_study)
    token = setup.status()["token"]
    assert token["state"] == "valid", token
    # The token server's access tokens last an hour (its exp is in whole seconds).
    left = dt.datetime.fromisoformat(token["expiresAt"]) - dt.datetime.now(dt.UTC)
    assert dt.timedelta(minutes=50) < left < dt.timedelta(hours=1, minutes=1), token

    token_server.expire_access_tokens()
    token_server.revoke_refresh_tokens()
    assert setup.infer().status_code == 502
    token = setup.status()["token"]
    assert token["state"] == "failing", token
    assert "refresh rejected (401)" in token["lastFailure"]
    since = dt.datetime.fromisoformat(token["failingSince"])
    assert dt.timedelta(0) <= dt.datetime.now(dt.UTC) - since < dt.timedelta(minutes=5)
    with setup.proxy.client() as client:
        page = client.get("/status", headers={"Accept": "text/html"}).text
    shown = token["failingSince"].replace("T", " ").replace("+00:00", " UTC")
    assert f"refresh failing since {shown}" in page
    text = json.dumps(setup.status()) + page
    assert entry["authToken"] not in text


# Rendered values the test reads back: the name of each card and the 5-minute row.
_READ_CARDS = """JSON.stringify({
  overflow: document.documentElement.scrollWidth - window.innerWidth,
  widest: Math.max(...[...document.querySelectorAll('body *')].map(
      e => e.getBoundingClientRect().right)) - window.innerWidth,
  viewport: window.innerWidth,
  cards: Object.fromEntries([...document.querySelectorAll('section.card')].map(card => [
    card.id,
    {title: card.querySelector('h3').innerText,
     five: [...card.querySelectorAll('tr[data-window="5m"] td')].map(td => td.innerText)}]))
})"""


def test_the_page_in_headless_chromium_at_desktop_and_phone_widths(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    orthanc_basic_auth: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
    tmp_path: Path,
) -> None:
    watched = start_watched(start_proxy, orthanc, orthanc_basic_auth, example_model, sample_study)
    send_traffic(watched)
    lungs = watched.report()["models"][watched.ids["lungs"]]["traffic"]["5m"]
    # No auto-refresh while the browser reads the page.
    url = f"{watched.proxy.url}/status?refresh=0"
    shots = [tmp_path / "status-desktop.png", tmp_path / "status-phone.png"]
    with headless_chromium(tmp_path / "chromium") as browser:
        page = browser.open_page()
        seen = {}
        for (width, height, mobile), shot in zip(
            ((1280, 900, False), (390, 844, True)), shots, strict=True
        ):
            page.emulate(width=width, height=height, mobile=mobile)
            page.navigate(url)
            seen[width] = json.loads(page.evaluate(_READ_CARDS))
            page.screenshot(shot)

    ids = watched.ids
    for width, found in seen.items():
        assert found["viewport"] == width, found
        # Nothing sticks out sideways: no horizontal scrolling, even at 390 px.
        assert found["overflow"] <= 0 and found["widest"] <= 0.5, (width, found)
        cards = found["cards"]
        assert "Lung segmenter" in cards[f"model-{ids['lungs']}"]["title"]
        assert "Unreachable model" in cards[f"model-{ids['broken']}"]["title"]
        main = cards[f"server-{ids['main']}"]["title"]
        assert "Main PACS" in main and "default" in main
        assert ids["down"] in cards[f"server-{ids['down']}"]["title"]
        rate, errors, p50, p95, hits = cards[f"model-{ids['lungs']}"]["five"]
        # Read before the browser came: with no new traffic a rate can only fall since.
        assert 0 < float(rate) <= lungs["requestsPerMinute"] + 0.05, (rate, lungs)
        assert errors == "0"
        assert p50.endswith(("ms", "s")) and p95.endswith(("ms", "s"))
        assert hits == f"{lungs['cacheHitRate'] * 100:.0f}%"
        assert cards[f"model-{ids['broken']}"]["five"][1] == "1 (100%)"
    for shot in shots:
        assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    publish = os.environ.get("STATUS_SCREENSHOT_DIR")
    if publish:
        for shot in shots:
            shutil.copy(shot, Path(publish) / shot.name)
