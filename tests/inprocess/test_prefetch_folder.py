"""Prefetch from a ``file://`` folder, in process: a rule on the folder server runs its
series by itself and the GET for it is a cache hit; ``--watch-interval 0`` turns the
watcher off, and /status says so."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from app_proxy import Deployment, write_json

pytestmark = pytest.mark.anyio

JSON = {"Accept": "application/json"}
# A bound for a loaded machine, not an expected duration.
DEADLINE = 60.0


def hits(metrics: str, model: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("model_proxy_cache_lookups_total{")
        and f'model="{model}"' in line
        and 'result="hit"' in line
    )


async def test_a_folder_series_is_prefetched_and_its_get_is_a_cache_hit(
    deployment: Deployment, tmp_path: Path
) -> None:
    model = deployment.models["seg"]
    rule = {
        "name": "folder CT",
        "model": model,
        "server": deployment.servers["folder"],
        "level": "series",
        # The study's series have 4 and 2 instances: only the first runs.
        "match": {"Modality": "CT", "minInstances": 3},
    }
    (tmp_path / "config").mkdir()
    write_json(tmp_path / "config" / "rules.json", {"rules": [rule]})
    study = deployment.study
    async with deployment.proxy(tmp_path, watch_interval=0.05) as proxy:
        deadline = time.monotonic() + DEADLINE
        while True:
            listed = (await proxy.client.get("/jobs", headers=JSON)).json()["jobs"]
            done: list[dict[str, Any]] = [
                job for job in listed if job["status"] not in ("queued", "running")
            ]
            if done:
                break
            assert time.monotonic() < deadline, f"no finished prefetch job: {listed}"
            await anyio.sleep(0.05)
        (job,) = done
        assert job["status"] == "succeeded", job
        assert (job["study"], job["series"]) == (study.study_uid, study.series[0].series_uid)
        before = hits((await proxy.client.get("/metrics")).text, model)
        answer = await proxy.client.get(deployment.path("seg", "series"))
        assert answer.status_code == 200, answer.text
        assert hits((await proxy.client.get("/metrics")).text, model) == before + 1
        watcher = (await proxy.client.get("/status", headers=JSON)).json()["watcher"]
        assert watcher["jobsStarted"] == {"folder CT": 1}
        (server,) = watcher["servers"].values()
        assert server["ok"] is True and server["studiesSeen"] == 1


async def test_watch_interval_zero_turns_the_watcher_off(
    deployment: Deployment, tmp_path: Path
) -> None:
    async with deployment.proxy(tmp_path, watch_interval=0.0) as proxy:
        report = (await proxy.client.get("/status", headers=JSON)).json()
        assert "watcher" not in report
        page = (await proxy.client.get("/status", headers={"Accept": "text/html"})).text
        assert "<h2>Prefetch</h2><p>Off (--watch-interval 0, or jobs are off).</p>" in page
