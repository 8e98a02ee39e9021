"""Jobs across a restart, and where they show: queued and running jobs survive a
restart (the running one runs again), ``--max-running-jobs`` queues the rest,
``/status`` shows the queue, and the ``/jobs`` page draws progress bars in a real
headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from harness import ExampleModel, OrthancServer, ProxyFactory
from held_relays import Stall, stalling_relay
from jobs_client import finished, start_jobs_proxy, wait_for_job

from model_proxy.sample_data import SampleStudy

STATUS_PAGE = {"ZHIVA_SHOW_STATUS_PAGE": "true"}
JSON = {"Accept": "application/json"}


def _series_bytes(study: SampleStudy, index: int) -> int:
    series = study.series[index]
    return sum(len(part10) for found, _, part10 in study.iter_instances() if found is series)


def test_queued_and_running_jobs_survive_a_restart(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
) -> None:
    stall = Stall(_series_bytes(sample_study, 0) // 3)
    with stalling_relay(orthanc.url, stall) as relay:
        setup = start_jobs_proxy(
            start_proxy,
            example_model,
            sample_study,
            f"{relay.url}/dicom-web",
            extra_args=["--max-running-jobs", "1"],
            env=STATUS_PAGE,
        )
        with setup.proxy.client() as client:
            first = setup.submit(client, series_index=0)
            wait_for_job(client, first, lambda job: stall.holding.is_set())
            second = setup.submit(client, series_index=1)
            # One at a time: the second waits behind the first.
            assert client.get(f"/jobs/{second}").json()["status"] == "queued"
            assert client.get(f"/jobs/{first}").json()["status"] == "running"
            queue = client.get("/status", headers=JSON).json()["jobs"]
            assert queue == {
                "queued": 1,
                "running": 1,
                "failedLastHour": 0,
                "runningHere": 1,
                "maxRunning": 1,
            }
            html = client.get("/status", headers={"Accept": "text/html"}).text
            assert re.search(r"<th>running</th><td[^>]*>1 of at most 1<", html), html

        setup.proxy.restart()
        with setup.proxy.client() as client:
            jobs = {job_id: wait_for_job(client, job_id, finished) for job_id in (first, second)}
        assert jobs[first]["status"] == jobs[second]["status"] == "succeeded", jobs
        # The first was running when the proxy stopped: it ran again (the model may
        # have seen it twice); the second had never started.
        assert jobs[first]["attempts"] == 2
        assert jobs[second]["attempts"] == 1
        assert jobs[first]["started"] < jobs[second]["started"]
        assert "was running when the proxy stopped" in setup.proxy.log_text()


def test_the_jobs_page_draws_progress_bars_in_headless_chromium(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
    tmp_path: Path,
) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.fail("chromium is not installed (apt-get install chromium)", pytrace=False)
    setup = start_jobs_proxy(start_proxy, example_model, sample_study, orthanc.dicomweb_url)
    with setup.proxy.client() as client:
        job_id = setup.submit(client, series_index=1)
        assert wait_for_job(client, job_id, finished)["status"] == "succeeded"
        page = client.get("/jobs", headers={"Accept": "text/html"})
        assert page.headers["content-type"].startswith("text/html")
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium'}",
            "--ignore-certificate-errors",
            # Lets the page's fetch of /jobs finish before the DOM is printed.
            "--virtual-time-budget=10000",
            "--dump-dom",
            f"{setup.proxy.url}/jobs",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    rows = re.findall(r'<tr class="job" data-id="([0-9a-f]+)" data-status="(\w+)">', dom.stdout)
    assert rows == [(job_id, "succeeded")], dom.stdout[-3000:]
    total = len(sample_study.series[1].sop_uids)
    # A full bar: the properties the script set are reflected as attributes.
    assert re.search(rf'<progress max="{total}" value="{total}">', dom.stdout), dom.stdout[-3000:]
    assert f"{total} / {total} done" in dom.stdout
    assert "1 recent jobs: 0 running, 0 queued." in dom.stdout


def test_jobs_share_admission_with_the_get_routes_and_a_queued_job_cancels(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
) -> None:
    stall = Stall(_series_bytes(sample_study, 0) // 3)
    with stalling_relay(orthanc.url, stall) as relay:
        setup = start_jobs_proxy(
            start_proxy,
            example_model,
            sample_study,
            f"{relay.url}/dicom-web",
            extra_args=["--max-running-jobs", "2", "--max-concurrent-inferences", "1"],
        )
        with setup.proxy.client() as client:
            holder = setup.submit(client, series_index=0)
            wait_for_job(client, holder, lambda job: stall.holding.is_set())
            # The job holds the one inference slot: a viewer's GET is refused as usual...
            refused = client.get(setup.series_path(1))
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "too_many_inferences"
            # ...while a second job waits for the slot instead of failing.
            waiting = setup.submit(client, series_index=1)
            wait_for_job(client, waiting, lambda job: job["status"] == "running")
            assert client.get(f"/jobs/{waiting}").json()["progress"]["phase"] == "queued"
            # A third job is queued behind --max-running-jobs; cancelled there, it never runs.
            third = client.post("/jobs", json=setup.series_job(1))
            queued = third.json()["id"]
            assert client.get(f"/jobs/{queued}").json()["status"] == "queued"
            assert client.delete(f"/jobs/{queued}").json()["status"] == "cancelled"
            stall.release()
            done = {job_id: wait_for_job(client, job_id, finished) for job_id in (holder, waiting)}
            assert {job["status"] for job in done.values()} == {"succeeded"}, done
            cancelled = client.get(f"/jobs/{queued}").json()
            assert (cancelled["status"], cancelled["attempts"], cancelled["started"]) == (
                "cancelled",
                0,
                None,
            )
