"""Client access (access.json with API keys: 401, 403, per-model rules) and the audit
record of each inference request, in process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from app_proxy import Deployment

from model_proxy.access import digest_of, new_api_key

pytestmark = pytest.mark.anyio

CHALLENGE = 'ApiKey realm="model-proxy"'  # no Bearer: this access.json has no jwt


def access_json(deployment: Deployment, keys: dict[str, str]) -> dict[str, Any]:
    return {
        "apiKeys": {
            "viewer": {"sha256": digest_of(keys["viewer"]).hex(), "roles": ["radiologist"]},
            "batch": {"sha256": digest_of(keys["batch"]).hex()},
        },
        "models": {
            deployment.models["seg"]: {"roles": ["radiologist"]},
            deployment.models["pred"]: {"keys": ["batch"]},
        },
        "unlistedModels": "deny",
    }


@pytest.fixture
def keys() -> dict[str, str]:
    return {"viewer": new_api_key(), "batch": new_api_key()}


async def test_api_keys_and_per_model_rules(
    deployment: Deployment, tmp_path: Path, keys: dict[str, str]
) -> None:
    seg, pred = deployment.path("seg"), deployment.path("pred")
    async with deployment.proxy(tmp_path, access=access_json(deployment, keys)) as proxy:
        get = proxy.client.get
        anonymous = await get(seg)
        wrong_key = await get(seg, headers={"X-API-Key": new_api_key()})
        viewer = await get(seg, headers={"X-API-Key": keys["viewer"]})
        batch = await get(pred, headers={"Authorization": f"ApiKey {keys['batch']}"})
        viewer_on_pred = await get(pred, headers={"X-API-Key": keys["viewer"]})
        unlisted = await get(deployment.path("ann"), headers={"X-API-Key": keys["batch"]})
        ambiguous = await get(seg, headers={"X-API-Key": "k", "Authorization": "Bearer t"})
        health = await get("/health")
        status = await get("/status", headers={"Accept": "application/json"})
        status_with_key = await get(
            "/status", headers={"Accept": "application/json", "X-API-Key": keys["batch"]}
        )

    for response, code in (
        (anonymous, "unauthenticated"),
        (wrong_key, "invalid_api_key"),
        (ambiguous, "ambiguous_credentials"),
    ):
        assert response.status_code == 401, response.text
        assert response.json()["code"] == code
        assert response.headers["WWW-Authenticate"] == CHALLENGE
    assert viewer.status_code == batch.status_code == 200, (viewer.text, batch.text)
    no_access = {"message": "You have no access to this model", "code": "no_access"}
    assert viewer_on_pred.status_code == unlisted.status_code == 403
    assert viewer_on_pred.json() == unlisted.json() == no_access
    assert health.status_code == 200  # open to load balancers
    assert status.status_code == 401
    assert status_with_key.status_code == 200


async def test_every_inference_request_is_audited(
    deployment: Deployment, tmp_path: Path, keys: dict[str, str]
) -> None:
    series = deployment.study.series[0]
    async with deployment.proxy(tmp_path, access=access_json(deployment, keys)) as proxy:
        ok = await proxy.client.get(
            deployment.path("seg"), headers={"X-API-Key": keys["viewer"], "X-Request-ID": "ok-1"}
        )
        refused = await proxy.client.get(deployment.path("seg"), headers={"X-Request-ID": "no-1"})
        await proxy.client.get("/health")  # not an inference: not audited
    assert ok.status_code == 200 and ok.headers["X-Request-ID"] == "ok-1"
    assert refused.status_code == 401
    records = {record["requestId"]: record for record in proxy.audit_records()}
    assert set(records) == {"ok-1", "no-1"}
    record = records["ok-1"]
    assert record["caller"] == "api-key:viewer"
    assert record["model"] == deployment.models["seg"]
    assert record["server"] == deployment.servers["folder"]
    assert record["level"] == "/studies/series/instances"
    assert (record["study"], record["series"], record["instance"]) == (
        deployment.study.study_uid,
        series.series_uid,
        series.sop_uids[0],
    )
    assert (record["status"], record["code"], record["modelCalled"]) == (200, "ok", True)
    assert record["instancesIn"] == 1 and record["dicomBytesIn"] > 64 * 64 * 2
    assert (records["no-1"]["status"], records["no-1"]["code"]) == (401, "unauthenticated")
    assert records["no-1"]["modelCalled"] is False
    # No patient data, no key in the audit log.
    assert proxy.settings.audit_log is not None
    text = proxy.settings.audit_log.read_text()
    assert deployment.study.patient_id not in text
    assert keys["viewer"] not in text


async def test_no_audit_log_when_turned_off(deployment: Deployment, tmp_path: Path) -> None:
    async with deployment.proxy(tmp_path, audit_log=None) as proxy:
        response = await proxy.client.get(deployment.path("pred"))
    assert response.status_code == 200
    assert not (tmp_path / "audit.jsonl").exists()
