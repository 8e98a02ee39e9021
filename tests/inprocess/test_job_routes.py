"""The jobs API in process: a job from the local folder to the GET route's result, its
events, ``Prefer: respond-async``, the access rules of the GET routes, and the jobs
off without the result cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import jsonschema_rs
import orjson
import pytest
from app_proxy import Deployment, Proxy, new_uid
from test_access_and_audit import access_json

from model_proxy.access import digest_of, new_api_key
from model_proxy.routes.openapi import DOCUMENT

pytestmark = pytest.mark.anyio

IDENTITY = {"Accept-Encoding": "identity"}


def series_job(deployment: Deployment, model: str = "seg") -> dict[str, Any]:
    return {
        "model": deployment.models[model],
        "study": deployment.study.study_uid,
        "series": deployment.study.series[0].series_uid,
    }


def assert_documented(instance: object, schema: str) -> None:
    """``instance`` fits the schema /openapi.json publishes for it (jsonschema_rs comes
    with schemathesis, which fuzzes the routes against the same document)."""
    root = {"$ref": f"#/components/schemas/{schema}", "components": DOCUMENT["components"]}
    jsonschema_rs.validate(root, instance)


async def finished_job(proxy: Proxy, job_id: str, headers: dict[str, str] | None = None) -> Any:
    with anyio.fail_after(60):
        while True:
            job = (await proxy.client.get(f"/jobs/{job_id}", headers=headers)).json()
            if job["status"] in {"succeeded", "failed", "cancelled"}:
                return job
            await anyio.sleep(0.02)


async def test_a_job_from_a_folder_gives_the_get_routes_result(
    deployment: Deployment, tmp_path: Path
) -> None:
    slices = len(deployment.study.series[0].sop_uids)
    async with deployment.proxy(tmp_path) as proxy:
        posted = await proxy.client.post("/jobs", json=series_job(deployment))
        assert posted.status_code == 202, posted.text
        job_id = posted.json()["id"]
        # The events stream ends by itself with the final status.
        events = await proxy.client.get(f"/jobs/{job_id}/events")
        job = await finished_job(proxy, job_id)
        result = await proxy.client.get(f"/jobs/{job_id}/result", headers=IDENTITY)
        direct = await proxy.client.get(deployment.path("seg", "series"), headers=IDENTITY)
        listed = await proxy.client.get("/jobs")
        status = await proxy.client.get("/status", headers={"Accept": "application/json"})
    assert job["status"] == "succeeded", job
    assert_documented(job, "Job")
    assert_documented(posted.json(), "JobAccepted")
    # A folder has no instance count up front: the total is known once all were sent.
    assert job["progress"]["instancesSent"] == job["progress"]["instancesTotal"] == slices
    assert result.status_code == direct.status_code == 200
    assert result.content == direct.content
    assert result.headers["etag"] == direct.headers["etag"]
    blocks = [block for block in events.text.split("\n\n") if block]
    assert blocks[-1].startswith("event: status\ndata: ")
    assert orjson.loads(blocks[-1].split("data: ", 1)[1])["status"] == "succeeded"
    assert [entry["id"] for entry in listed.json()["jobs"]] == [job_id]
    assert status.json()["jobs"] == {
        "queued": 0,
        "running": 0,
        "failedLastHour": 0,
        "runningHere": 0,
        "maxRunning": 4,
    }


async def test_a_failed_job_says_why_and_has_no_result(
    deployment: Deployment, tmp_path: Path
) -> None:
    missing = series_job(deployment) | {"series": "1.2.3.4.5"}
    async with deployment.proxy(tmp_path) as proxy:
        posted = await proxy.client.post("/jobs", json=missing)
        job = await finished_job(proxy, posted.json()["id"])
        result = await proxy.client.get(f"/jobs/{job['id']}/result")
        status = await proxy.client.get("/status", headers={"Accept": "application/json"})
        failed = await proxy.client.get("/jobs", params={"status": "failed"})
        put = await proxy.client.put("/jobs")
        patch = await proxy.client.patch(f"/jobs/{job['id']}")
    assert job["status"] == "failed"
    assert_documented(job, "Job")
    assert job["error"]["code"] == "not_on_pacs"
    assert "1.2.3.4.5" in job["error"]["message"]
    assert result.status_code == 409 and result.json()["code"] == "job_failed"
    assert status.json()["jobs"]["failedLastHour"] == 1
    assert [entry["id"] for entry in failed.json()["jobs"]] == [job["id"]]
    assert put.status_code == patch.status_code == 405
    assert put.json()["message"] == "PUT is not allowed here; use GET or POST"
    assert patch.json()["message"] == "PATCH is not allowed here; use DELETE or GET"


async def test_jobs_follow_the_access_rules_of_the_get_routes(
    deployment: Deployment, tmp_path: Path
) -> None:
    keys = {"viewer": new_api_key(), "batch": new_api_key()}
    viewer, batch = {"X-API-Key": keys["viewer"]}, {"X-API-Key": keys["batch"]}
    async with deployment.proxy(tmp_path, access=access_json(deployment, keys)) as proxy:
        client = proxy.client
        anonymous = await client.post("/jobs", json=series_job(deployment))
        not_allowed = await client.post("/jobs", json=series_job(deployment), headers=batch)
        posted = await client.post(
            "/jobs", json=series_job(deployment), headers=viewer | {"X-Request-ID": "job-1"}
        )
        job_id = posted.json()["id"]
        await finished_job(proxy, job_id, viewer)
        others_view = await client.get(f"/jobs/{job_id}", headers=batch)
        others_cancel = await client.delete(f"/jobs/{job_id}", headers=batch)
        others_list = await client.get("/jobs", headers=batch)
        own_list = await client.get("/jobs", headers=viewer)
        anonymous_list = await client.get("/jobs")
    assert anonymous.status_code == anonymous_list.status_code == 401
    assert not_allowed.status_code == others_view.status_code == others_cancel.status_code == 403
    assert posted.status_code == 202
    assert others_list.json()["jobs"] == []
    assert [entry["id"] for entry in own_list.json()["jobs"]] == [job_id]
    # Submitting a job is audited like a GET: who, which model, which study, the answer.
    records = proxy.audit_records()
    submitted = next(record for record in records if record["requestId"] == "job-1")
    assert (submitted["method"], submitted["path"], submitted["status"]) == ("POST", "/jobs", 202)
    assert submitted["caller"] == "api-key:viewer"
    assert submitted["model"] == deployment.models["seg"]
    assert submitted["series"] == deployment.study.series[0].series_uid
    refused = [r for r in records if r["path"] == f"/jobs/{job_id}" and r["status"] == 403]
    assert {r["method"] for r in refused} == {"GET", "DELETE"}
    assert all(r["caller"] == "api-key:batch" for r in refused)


async def test_prefer_respond_async_and_jobs_off_without_the_cache(
    deployment: Deployment, tmp_path: Path
) -> None:
    prefer = {"Prefer": "respond-async"}
    for name in ("on", "off"):
        (tmp_path / name).mkdir()
    async with deployment.proxy(tmp_path / "on") as proxy:
        accepted = await proxy.client.get(deployment.path("seg", "series"), headers=prefer)
        job = await finished_job(proxy, accepted.json()["id"])
    async with deployment.proxy(tmp_path / "off", cache_max_bytes=0) as proxy:
        off = await proxy.client.get(deployment.path("seg", "series"), headers=prefer)
        listing = await proxy.client.get("/jobs")
        status = await proxy.client.get("/status")
    assert accepted.status_code == 202
    assert accepted.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "succeeded"
    assert off.status_code == listing.status_code == 404
    assert off.json()["code"] == "jobs_unavailable"
    assert "Off: the result cache is off" in status.text


async def test_finished_jobs_outlive_a_restart_until_their_retention(
    deployment: Deployment, tmp_path: Path
) -> None:
    async with deployment.proxy(tmp_path) as proxy:
        posted = await proxy.client.post("/jobs", json=series_job(deployment))
        job = await finished_job(proxy, posted.json()["id"])
    async with deployment.proxy(tmp_path) as proxy:
        kept = await proxy.client.get(f"/jobs/{job['id']}")
        result = await proxy.client.get(f"/jobs/{job['id']}/result", headers=IDENTITY)
    # Started again with a retention shorter than the job's age: purged at start-up.
    async with deployment.proxy(tmp_path, job_retention=0.001) as proxy:
        purged = await proxy.client.get(f"/jobs/{job['id']}")
        # The result stays in the result cache, under its own limits.
        cached = await proxy.client.get(deployment.path("seg", "series"), headers=IDENTITY)
    assert job["status"] == "succeeded"
    assert kept.json() == job
    assert result.status_code == 200
    assert purged.status_code == 404 and purged.json()["code"] == "unknown_job"
    assert cached.content == result.content
    assert cached.headers["etag"] == result.headers["etag"]


async def test_jobs_follow_the_server_rules_of_the_get_routes(
    deployment: Deployment, tmp_path: Path
) -> None:
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
    viewer, batch = {"X-API-Key": keys["viewer"]}, {"X-API-Key": keys["batch"]}
    job = series_job(deployment, "pred")
    async with deployment.proxy(tmp_path, access=access) as proxy:
        client = proxy.client
        refused = await client.post("/jobs", json=job, headers=batch)
        refused_async = await client.get(
            deployment.path("pred", "series"), headers=batch | {"Prefer": "respond-async"}
        )
        on_pacs = await client.post("/jobs", json=job | {"server": pacs}, headers=batch)
        on_folder = await client.post("/jobs", json=job, headers=viewer)
        folder_job = on_folder.json()["id"]
        await finished_job(proxy, folder_job, viewer)
        await finished_job(proxy, on_pacs.json()["id"], batch)
        others_view = await client.get(f"/jobs/{folder_job}", headers=batch)
        batch_list = await client.get("/jobs", headers=batch)
    assert refused.status_code == refused_async.status_code == others_view.status_code == 403
    assert refused.json()["code"] == "no_server_access"
    assert on_pacs.status_code == on_folder.status_code == 202
    assert [entry["id"] for entry in batch_list.json()["jobs"]] == [on_pacs.json()["id"]]


async def test_the_store_step_into_a_folder_and_when_the_conversion_fails(
    deployment: Deployment, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    outbox_id, required, optional = new_uid(), new_uid(), new_uid()
    servers = deployment.servers_json() | {outbox_id: {"uri": outbox.as_uri()}}
    seg = ("/segmentation", "segmentation", ["/studies/series"])
    models = deployment.models_json() | {
        required: deployment.model(*seg, store={"server": outbox_id}),
        optional: deployment.model(*seg, store={"server": outbox_id, "required": False}),
    }
    for each in ("a", "b"):
        (tmp_path / each).mkdir()
    study = {
        "study": deployment.study.study_uid,
        "series": deployment.study.series[0].series_uid,
    }

    async def run(proxy: Proxy, model: str) -> Any:
        posted = await proxy.client.post("/jobs", json={"model": model, **study})
        assert posted.status_code == 202, posted.text
        job = await finished_job(proxy, posted.json()["id"])
        assert_documented(job, "Job")
        return job

    async with deployment.proxy(tmp_path / "a", servers=servers, models=models) as proxy:
        stored = await run(proxy, required)
        assert stored["status"] == "succeeded" and stored["storeError"] is None, stored
        (sop_uid,) = stored["stored"]
        assert list(outbox.glob(f"*/{sop_uid}.dcm"))
    # The conversion's spooled files (docs/dicom-outputs.md) are gone with the job's answer.
    assert not list((tmp_path / "a" / "data" / "dicom-outputs").iterdir())

    # A result over --dicom-max-result cannot be converted: a required store fails the
    # job with the GET route's error; one that is not required is recorded on the job.
    async with deployment.proxy(
        tmp_path / "b", servers=servers, models=models, dicom_max_result_bytes=1024
    ) as proxy:
        failed = await run(proxy, required)
        kept = await run(proxy, optional)
        result = await proxy.client.get(f"/jobs/{kept['id']}/result", headers=IDENTITY)
        status = (await proxy.client.get("/status", headers={"Accept": "application/json"})).json()
    assert failed["status"] == "failed" and failed["stored"] is None
    assert failed["error"]["code"] == "model_result_too_large"
    assert kept["status"] == "succeeded" and kept["stored"] == []
    assert kept["storeError"]["code"] == "model_result_too_large"
    assert result.status_code == 200 and deployment.study.study_uid in result.json()
    failure = status["servers"][outbox_id]["lastStoreFailure"]
    assert failure["message"] == kept["storeError"]["message"]
    assert [path.name for path in outbox.rglob("*.dcm")] == [f"{sop_uid}.dcm"]
