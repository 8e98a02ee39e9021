"""The audit log, CORS allow-lists and secrets: what a security officer would check.
Real Orthanc, example model, IdP double and proxy on loopback."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from guarded_deployment import PACS_PASSWORD, VIEWER_ORIGIN, Guarded
from harness import ExampleModel, OrthancServer, ProxyFactory, model_entry, new_uid
from harness import server_entry as orthanc_entry

from model_proxy.cli.commands import main
from model_proxy.sample_data import SampleStudy

PATIENT_NAME = "Phantom^Synthetic"  # what sample_data writes into every file


def audit_record(guarded: Guarded, request_id: str) -> dict[str, Any]:
    """The record of ``request_id``; the writer thread may need a moment."""
    deadline = time.monotonic() + 10
    while True:
        path = guarded.proxy.log_dir / "audit.jsonl"
        if path.exists():
            for record in guarded.audit_records():
                if record["requestId"] == request_id:
                    return record
        if time.monotonic() > deadline:
            pytest.fail(f"no audit record for {request_id} in {path}")
        time.sleep(0.05)


# --- audit log ------------------------------------------------------------------------


def test_a_successful_inference_is_audited(guarded: Guarded) -> None:
    series = guarded.study.series[0]
    response = guarded.get(
        guarded.instance_path("seg"),
        headers={**guarded.with_key("viewer"), "X-Request-ID": "ok-1"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == "ok-1"
    record = audit_record(guarded, "ok-1")
    assert record["time"].endswith("Z") and "T" in record["time"]
    assert record["caller"] == "api-key:viewer"
    assert record["client"] == "127.0.0.1"
    assert record["model"] == guarded.models["seg"]
    assert record["server"] == guarded.servers["basic"]
    assert record["level"] == "/studies/series/instances"
    assert (record["study"], record["series"], record["instance"]) == (
        guarded.study.study_uid,
        series.series_uid,
        series.sop_uids[0],
    )
    assert (record["status"], record["code"]) == (200, "ok")
    assert record["instancesIn"] == 1
    assert record["dicomBytesIn"] > 128 * 128 * 2
    # What went over the wire: the compressed body when the viewer accepts compression.
    assert response.headers.get("content-encoding") in {"zstd", "br", "gzip"}
    assert record["resultBytesOut"] == response.num_bytes_downloaded < len(response.content)
    assert record["durationMs"] > 0
    assert record["dataFilters"] is None
    assert record["modelCalled"] is True


def test_a_result_from_the_cache_is_audited_as_such(guarded: Guarded) -> None:
    series = guarded.study.series[1]  # an instance no other test asks for
    path = (
        f"/segmentations/{guarded.models['seg']}/studies/{guarded.study.study_uid}"
        f"/series/{series.series_uid}/instances/{series.sop_uids[5]}"
    )
    for request_id in ("cache-1", "cache-2"):
        headers = {**guarded.with_key("viewer"), "X-Request-ID": request_id}
        response = guarded.get(path, headers=headers)
        assert response.status_code == 200, response.text
    first, second = audit_record(guarded, "cache-1"), audit_record(guarded, "cache-2")
    assert first["modelCalled"] is True and first["dicomBytesIn"] > 0
    assert second["modelCalled"] is False and second["dicomBytesIn"] == 0
    assert (second["status"], second["code"], second["caller"]) == (200, "ok", "api-key:viewer")


def test_data_filter_uids_and_jwt_subjects_are_audited(guarded: Guarded) -> None:
    one, two = guarded.study.series
    filters = json.dumps(
        [
            {"dataKey": "series-one", "uuid": one.series_uid},
            {"dataKey": "series-two", "uuid": two.series_uid},
        ]
    )
    token = guarded.idp.mint(guarded.rsa, subject="bob", roles=["radiologist"])
    response = guarded.get(
        f"/predictions/{guarded.models['two-series']}/studies/{guarded.study.study_uid}",
        params={"data-filters": filters},
        headers={**guarded.with_token(token), "X-Request-ID": "filters-1"},
    )
    assert response.status_code == 200, response.text
    record = audit_record(guarded, "filters-1")
    assert record["caller"] == "jwt:bob"
    assert record["dataFilters"] == [
        {"dataKey": "series-one", "series": one.series_uid},
        {"dataKey": "series-two", "series": two.series_uid},
    ]
    assert record["instancesIn"] == len(one.sop_uids) + len(two.sop_uids)


def test_refusals_and_failures_are_audited_with_their_code(guarded: Guarded) -> None:
    cases = [
        ("no-auth", {}, guarded.instance_path("seg"), 401, "unauthenticated", None),
        ("no-access", guarded.with_key("batch"), guarded.instance_path("seg"), 403, "no_access",
         "api-key:batch"),
        ("bad-uid", guarded.with_key("viewer"),
         f"/segmentations/{guarded.models['seg']}/studies/1.02", 400, "invalid_uid",
         "api-key:viewer"),
        ("pacs-down", guarded.with_key("viewer"),
         guarded.instance_path("seg") + f"?server={guarded.servers['down']}", 502, "pacs_error",
         "api-key:viewer"),
    ]  # fmt: skip
    for request_id, headers, path, status, code, caller in cases:
        response = guarded.get(path, headers={**headers, "X-Request-ID": request_id})
        assert response.status_code == status, response.text
        record = audit_record(guarded, request_id)
        assert (record["status"], record["code"], record["caller"]) == (status, code, caller)
        assert record["resultBytesOut"] == 0
    assert audit_record(guarded, "no-access")["model"] == guarded.models["seg"]
    assert audit_record(guarded, "no-access")["study"] is None  # refused before the request
    assert audit_record(guarded, "pacs-down")["server"] == guarded.servers["down"]


def test_audit_log_holds_no_patient_names_pixels_or_secrets(guarded: Guarded) -> None:
    response = guarded.get(
        guarded.instance_path("seg"), headers={**guarded.with_key("viewer"), "X-Request-ID": "p"}
    )
    assert response.status_code == 200
    audit_record(guarded, "p")
    text = (guarded.proxy.log_dir / "audit.jsonl").read_text()
    assert PATIENT_NAME not in text and "Phantom" not in text
    assert "PHANTOM-" not in text  # the PatientID
    for secret in (*guarded.keys.values(), PACS_PASSWORD):
        assert secret not in text
    # Identifiers and sizes only: no line comes near the size of a slice.
    assert max(len(line) for line in text.splitlines()) < 2000
    assert (guarded.proxy.log_dir / "audit.jsonl").stat().st_mode & 0o077 == 0


def test_a_full_disk_costs_audit_records_not_requests(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
) -> None:
    model_id = new_uid()
    proxy = start_proxy(
        {new_uid(): orthanc_entry(orthanc)},
        {model_id: model_entry(example_model, "/prediction", "prediction", ["/studies/series"])},
        extra_args=["--audit-log", "/dev/full"],  # every write fails with ENOSPC
    )
    series = sample_study.series[1]
    path = f"/predictions/{model_id}/studies/{sample_study.study_uid}/series/{series.series_uid}"
    with proxy.client() as client:
        for _ in range(3):
            assert client.get(path).status_code == 200
    deadline = time.monotonic() + 10
    while "audit log /dev/full: cannot write" not in proxy.log_text():
        assert time.monotonic() < deadline, proxy.log_text()
        time.sleep(0.05)
    assert "Traceback" not in proxy.log_text()


# --- CORS -----------------------------------------------------------------------------


def _preflight(guarded: Guarded, origin: str) -> httpx.Response:
    with guarded.proxy.client() as client:
        return client.options(
            guarded.instance_path("seg"),
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization, x-api-key",
            },
        )


def test_cors_allow_list_answers_allowed_origins_only(guarded: Guarded) -> None:
    allowed = _preflight(guarded, VIEWER_ORIGIN)
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == VIEWER_ORIGIN
    assert "authorization" in allowed.headers["Access-Control-Allow-Headers"].lower()
    refused = _preflight(guarded, "https://evil.example")
    assert refused.status_code == 400
    assert "Access-Control-Allow-Origin" not in refused.headers

    simple = guarded.get(
        guarded.instance_path("seg"),
        headers={**guarded.with_key("viewer"), "Origin": VIEWER_ORIGIN},
    )
    assert simple.status_code == 200
    assert simple.headers["Access-Control-Allow-Origin"] == VIEWER_ORIGIN
    assert "X-Request-ID" in simple.headers["Access-Control-Expose-Headers"]
    other = guarded.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_default_cors_is_open_with_a_warning(
    start_proxy: ProxyFactory, orthanc: OrthancServer
) -> None:
    proxy = start_proxy({new_uid(): orthanc_entry(orthanc)}, {})
    with proxy.client() as client:
        response = client.get("/health", headers={"Origin": "https://any.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    log = proxy.log_text()
    assert "WARNING" in log and "CORS allows every origin (*)" in log
    assert "client authentication is off" in log


def test_bad_cors_origins_stop_the_start_with_a_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--config-dir", str(tmp_path), "--no-tls", "--cors-origins"]
    assert main([*argv, "https://viewer.local/app"]) == 2
    assert "--cors-origins: CORS origin 'https://viewer.local/app' must look like" in (
        capsys.readouterr().err
    )
    assert main([*argv, "*, https://viewer.local"]) == 2
    assert '"*" allows every origin' in capsys.readouterr().err


# --- secrets --------------------------------------------------------------------------


def test_no_secret_in_any_log_body_or_status(guarded: Guarded) -> None:
    token = guarded.idp.mint(guarded.rsa, subject="bob", roles=["radiologist"])
    bodies = []
    requests: list[tuple[str, dict[str, str]]] = [
        ("/status", {**guarded.with_key("viewer"), "Accept": "application/json"}),
        ("/status", guarded.with_key("viewer")),
        (guarded.instance_path("seg") + f"?server={guarded.servers['wrong-password']}",
         guarded.with_key("viewer")),
        (guarded.instance_path("seg") + f"?server={guarded.servers['down']}",
         guarded.with_token(token)),
        (guarded.instance_path("seg"), guarded.with_token(token + "x")),
        (guarded.instance_path("seg"), {"X-API-Key": guarded.keys["viewer"] + "x"}),
        (guarded.instance_path("pred", "predictions"), guarded.with_token(token)),
    ]  # fmt: skip
    for path, headers in requests:
        response = guarded.get(path, headers=headers)
        assert response.status_code in (200, 401, 403, 502), response.text
        bodies.append(response.text)
        bodies.extend(f"{name}: {value}" for name, value in response.headers.items())
    assert any("PACS" in body for body in bodies)  # the 502s did say what failed
    everything = "\n".join([*bodies, guarded.proxy.log_text()])
    secrets = [
        PACS_PASSWORD,
        "dXNlcjpwYXNz",  # base64 of the basic auth user:pass
        *guarded.keys.values(),
        token,
        token.split(".")[2],  # the signature alone
        "Dr. Alice Example",  # a name claim inside the token
    ]
    for secret in secrets:
        assert secret not in everything, secret


def test_start_up_warns_about_secret_files_others_can_read(guarded: Guarded) -> None:
    log = guarded.proxy.log_text()
    servers = guarded.proxy.config_dir / "servers.json"
    access = guarded.proxy.config_dir / "access.json"
    assert f"{servers} holds PACS passwords or tokens and is readable" in log
    assert f"{access} holds client access rules" in log
    assert "chmod 600" in log
