"""Prefetch on arrival end to end: ``model-proxy serve`` with a rules.json, a real Orthanc
and the real example model. A new study with a matching rule becomes a job that runs,
and the viewer's GET for it is then a cache hit (no model call); a study no rule
matches runs nothing; a PACS that is down shows on /status and is logged once; a
broken rules.json is refused on reload; a restart does not run the study again.

The watcher polls every ``--watch-interval 0.5`` s; the tests wait for what they look
for (a job, a number of polls) with a deadline, never for a fixed time.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from datetime import date
from typing import Any

import httpx
import pytest
from harness import (
    ExampleModel,
    OrthancServer,
    ProxyFactory,
    ProxyProcess,
    jobs_of_study,
    model_entry,
    new_uid,
    server_entry,
    start_orthanc,
    wait_until,
)
from processes import free_port

from model_proxy.sample_data import SampleStudy, make_study

pytestmark = pytest.mark.integration

TODAY = date.today().strftime("%Y%m%d")
IDENTITY = {"Accept-Encoding": "identity"}
JSON = {"Accept": "application/json"}
STATUS_ON = {"ZHIVA_SHOW_STATUS_PAGE": "true"}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """An Orthanc of this module's own: the studies it holds are the ones uploaded here."""
    server = start_orthanc(tmp_path_factory.mktemp("orthanc-prefetch"))
    yield server
    server.stop()


def study_of(seed: int) -> SampleStudy:
    return make_study(series_slices=(24, 12), rows=32, columns=32, seed=seed, study_date=TODAY)


def upload(pacs: OrthancServer, study: SampleStudy) -> None:
    pacs.upload_many(part10 for _, _, part10 in study.iter_instances())


def watcher_of(client: httpx.Client) -> dict[str, Any]:
    answer = client.get("/status", headers=JSON)
    assert answer.status_code == 200, answer.text
    watcher: dict[str, Any] = answer.json()["watcher"]
    return watcher


def polls_of(client: httpx.Client, server_id: str) -> int:
    server = watcher_of(client)["servers"].get(server_id)
    return 0 if server is None else int(server["polls"])


def wait_for_polls(client: httpx.Client, server_id: str, more: int) -> None:
    """Until the watcher has polled ``server_id`` ``more`` times from now: enough for a
    study that was there before to be seen, found stable and matched."""
    target = polls_of(client, server_id) + more
    wait_until(f"{more} polls", lambda: polls_of(client, server_id) >= target)


def request_line(proxy: ProxyProcess, path: str) -> str:
    lines = [line for line in proxy.log_text().splitlines() if f"path={path} " in line]
    assert lines, f"no request line for {path}"
    return lines[-1]


def test_a_new_study_is_run_by_its_rule_and_the_viewers_get_is_a_cache_hit(
    start_proxy: ProxyFactory,
    pacs: OrthancServer,
    example_model: ExampleModel,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    matching, other = study_of(21), study_of(22)
    model_id, server_id, down_id = new_uid(), new_uid(), new_uid()
    servers = {
        server_id: server_entry(pacs),
        # Nothing listens there: the watcher reports it and goes on.
        down_id: {"uri": f"http://127.0.0.1:{free_port()}/dicom-web"},
    }
    levels = ["/studies", "/studies/series"]
    models = {model_id: model_entry(example_model, "/segmentation", "segmentation", levels)}
    rules: list[dict[str, Any]] = [
        {
            "name": "phantom lungs",
            "model": model_id,
            "server": server_id,
            "level": "series",
            "match": {
                "Modality": "CT",
                "AccessionNumber": "PH000021",  # not the other study's PH000022
                "SeriesDescription": {"regex": "(?i)ct 1$"},
                "minInstances": 20,
            },
        },
        {"name": "the PACS that is down", "model": model_id, "server": down_id, "level": "study"},
    ]
    config_dir = tmp_path_factory.mktemp("prefetch")
    (config_dir / "rules.json").write_text(json.dumps({"rules": rules}))
    proxy = start_proxy(
        servers,
        models,
        config_dir=config_dir,
        env=STATUS_ON,
        extra_args=["--watch-interval", "0.5"],
    )
    upload(pacs, other)  # first: by the time the other one is run, this one was looked at
    upload(pacs, matching)
    series = matching.series[0].series_uid
    with proxy.client() as client:
        (job,) = wait_until(
            "finished prefetch job",
            lambda: jobs_of_study(client, matching.study_uid, finished=True),
        )
        assert job["status"] == "succeeded", job
        assert job["series"] == series and job["model"] == model_id and job["server"] == server_id
        assert len(jobs_of_study(client, matching.study_uid)) == 1  # not the 12-slice series
        assert jobs_of_study(client, other.study_uid) == []

        model_calls = proxy.log_text().count("model_called=True")
        path = f"/segmentations/{model_id}/studies/{matching.study_uid}/series/{series}"
        answer = client.get(path, headers=IDENTITY)
        assert answer.status_code == 200, answer.text
        assert matching.study_uid in answer.json()
        line = request_line(proxy, path)
        assert "cache=hit" in line and "model_called=False" in line, line
        assert proxy.log_text().count("model_called=True") == model_calls

        wait_for_polls(client, down_id, 3)
        watcher = watcher_of(client)
        assert watcher["on"] is True and watcher["rules"] == 2 and watcher["watching"] is True
        assert watcher["jobsStarted"] == {"phantom lungs": 1, "the PACS that is down": 0}
        up, down = watcher["servers"][server_id], watcher["servers"][down_id]
        assert up["ok"] is True and up["error"] is None and up["studiesSeen"] == 2
        assert up["lastPoll"] is not None and not up["truncated"]
        assert down["ok"] is False and "unreachable" in down["error"], down
        # Logged once per outage, not once per poll.
        output = proxy.process.log_text().splitlines()  # stdout; the log dir has it again
        warnings = [line for line in output if "prefetch: PACS" in line]
        assert len(warnings) == 1, warnings

        page = client.get("/status", headers={"Accept": "text/html"}).text
        assert "<h2>Prefetch</h2>" in page and "phantom lungs" in page
        metrics = client.get("/metrics").text
        labels = ['rule="phantom lungs"', f'model="{model_id}"', f'server="{server_id}"']
        counted = [
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("model_proxy_prefetch_jobs_total{")
            and all(label in line for label in labels)
        ]
        assert counted == [1.0], metrics

        # A broken rules.json is refused on reload; the rules in force stay.
        broken = rules[0] | {"match": {"SeriesDescription": {"regex": "(lung"}}}
        (config_dir / "rules.json").write_text(json.dumps({"rules": [broken]}))
        pid = proxy.process.pid
        assert pid is not None
        os.kill(pid, signal.SIGHUP)
        wait_until("refused reload", lambda: "config reload refused" in proxy.log_text())
        refused = 'rule "phantom lungs", field "match.SeriesDescription": invalid regular'
        assert refused in proxy.log_text()
        assert watcher_of(client)["rules"] == 2

    (config_dir / "rules.json").write_text(json.dumps({"rules": rules}))
    proxy.restart()  # the same data dir: the ledger in jobs.sqlite remembers the run
    with proxy.client() as client:
        wait_for_polls(client, server_id, 3)
        assert len(jobs_of_study(client, matching.study_uid)) == 1
        assert watcher_of(client)["jobsStarted"]["phantom lungs"] == 0
