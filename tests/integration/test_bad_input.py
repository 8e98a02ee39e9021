"""Bad input of every kind gets a 4xx with a JSON ``{"message", "code"}``, never a 5xx
and never a traceback; the proxy keeps serving. Requests httpx would normalise (dot
segments, encoded slashes, NUL bytes) go over a raw socket."""

from __future__ import annotations

import json

import httpx
import pytest
from deployment import Deployment, expect_error
from harness import new_uid
from raw_http import RawAnswer, raw_request

from model_proxy.web.http_limits import MAX_HEADER_COUNT, MAX_URL_BYTES


def expect_json_error(answer: RawAnswer | httpx.Response, status: int, code: str) -> str:
    if isinstance(answer, httpx.Response):
        return expect_error(answer, status, code)
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json", answer.headers
    body = answer.json()
    assert set(body) == {"message", "code"} and body["code"] == code, body
    message: str = body["message"]
    return message


def get(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def still_serving(deployment: Deployment) -> None:
    response = deployment.get(deployment.series_path("predictions", "pred"))
    assert response.status_code == 200, response.text


# --- path traversal and odd bytes in the path, sent exactly as written ---------------------


@pytest.mark.parametrize(
    ("tail", "status", "code"),
    [
        ("/series/..", 400, "invalid_uid"),
        ("/series/%2e%2e", 400, "invalid_uid"),
        ("/series/%2E%2E%2F%2E%2E%2Fstatus", 404, "not_found"),
        ("/series/..%2F..%2F..%2Fetc%2Fpasswd", 404, "not_found"),
        ("/series/../../../../etc/passwd", 404, "not_found"),
        ("/series/1.2%003", 400, "invalid_uid"),
        ("/series/%00", 400, "invalid_uid"),
        ("/series/1.2.3%20", 400, "invalid_uid"),
        ("/series/%ff%fe", 400, "invalid_uid"),
        ("/series/%zz", 400, "invalid_uid"),
        ("/series/%C2%B9.2", 400, "invalid_uid"),  # superscript one is not an ASCII digit
        ("/series/1.2/instances/%2e", 400, "invalid_uid"),
        ("/series/1.2/instances/1.2/extra", 404, "not_found"),
    ],
)
def test_odd_paths(deployment: Deployment, tail: str, status: int, code: str) -> None:
    path = f"/segmentations/{deployment.models['seg']}/studies/{deployment.study.study_uid}{tail}"
    expect_json_error(raw_request(deployment.proxy, get(path)), status, code)


@pytest.mark.parametrize(
    ("target", "status", "code"),
    [
        ("/../../etc/passwd", 404, "not_found"),
        ("/segmentations/../status", 404, "not_found"),
        ("/%2e%2e/%2e%2e/etc/passwd", 404, "not_found"),
        ("/segmentations/%00/studies/1.2", 404, "unknown_model"),
        ("/segmentations/..%2F..%2Fstatus/studies/1.2", 404, "not_found"),
        ("/segmentations/{model}%00/studies/1.2", 404, "unknown_model"),
        ("/Segmentations/{model}/studies/1.2", 404, "not_found"),
        ("http://elsewhere.example/segmentations/{model}/studies/1.2", 404, "not_on_pacs"),
        ("*", 404, "not_found"),
    ],
)
def test_odd_targets(deployment: Deployment, target: str, status: int, code: str) -> None:
    target = target.replace("{model}", deployment.models["seg"])
    expect_json_error(raw_request(deployment.proxy, get(target)), status, code)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /health\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /he alth HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked"
        b"\r\n\r\n",
    ],
)
def test_bytes_that_are_not_http_get_a_json_400(
    deployment: Deployment, request_bytes: bytes
) -> None:
    expect_json_error(raw_request(deployment.proxy, request_bytes), 400, "invalid_http")


# --- oversized URLs and headers: refused while parsing, before memory is spent -------------


def test_url_over_the_limit_is_414(deployment: Deployment) -> None:
    path = deployment.series_path("segmentations", "seg")
    padding = "x" * (MAX_URL_BYTES - len(path))
    message = expect_json_error(
        raw_request(deployment.proxy, get(f"{path}?_={padding}")), 414, "uri_too_long"
    )
    assert str(MAX_URL_BYTES) in message
    still_serving(deployment)


def test_url_just_under_the_limit_is_served(deployment: Deployment) -> None:
    path = deployment.series_path("predictions", "pred")
    padding = "x" * (MAX_URL_BYTES - len(path) - len("?_="))
    response = deployment.get(f"{path}?_={padding}")
    assert response.status_code == 200, response.text


def test_huge_url_is_refused_without_reading_it_all(deployment: Deployment) -> None:
    # 16 MiB of URL: the answer comes long before the proxy could have buffered it.
    head = b"GET /health?" + b"a" * (16 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    expect_json_error(raw_request(deployment.proxy, head), 414, "uri_too_long")
    still_serving(deployment)


@pytest.mark.parametrize(
    "headers",
    [
        ["X-Big: " + "y" * 9000],
        [f"X-{index}: y" for index in range(MAX_HEADER_COUNT + 1)],
        [f"X-{index}: " + "y" * 4000 for index in range(9)],
        ["Cookie: " + "y" * (4 << 20)],
    ],
    ids=["one-long-line", "too-many", "too-much-in-all", "4-MiB-cookie"],
)
def test_oversized_headers_are_431(deployment: Deployment, headers: list[str]) -> None:
    answer = raw_request(deployment.proxy, get("/health", *headers))
    expect_json_error(answer, 431, "headers_too_large")
    still_serving(deployment)


# --- the proxy's own checks, through a normal client ---------------------------------------


@pytest.mark.parametrize(
    "model_id",
    [new_uid(), "not-a-uuid", "x" * 5000, "%00", "'; DROP TABLE models; --", "{model}"],
)
def test_unknown_models_are_404(deployment: Deployment, model_id: str) -> None:
    study = deployment.study.study_uid
    response = deployment.get(f"/segmentations/{model_id}/studies/{study}")
    message = expect_error(response, 404, "unknown_model")
    assert len(message) < 200  # the caller's value is shortened, not echoed whole


@pytest.mark.parametrize("server", [new_uid(), "", "nope", "\x00", "x" * 3000])
def test_unknown_servers_are_404(deployment: Deployment, server: str) -> None:
    path = deployment.series_path("segmentations", "seg")
    message = expect_error(deployment.get(path, params={"server": server}), 404, "unknown_server")
    assert len(message) < 200


def test_server_given_twice_is_400(deployment: Deployment) -> None:
    path = deployment.series_path("segmentations", "seg")
    server = deployment.servers["orthanc"]
    expect_error(deployment.get(path, params=[("server", server)] * 2), 400, "bad_request")


@pytest.mark.parametrize(
    ("family", "model", "level", "code"),
    [
        ("annotations", "seg", "series", "wrong_task"),
        ("predictions", "ann", "instance", "wrong_task"),
        ("segmentations", "seg-series-only", "study", "unsupported_level"),
        ("segmentations", "seg-series-only", "instance", "unsupported_level"),
    ],
)
def test_wrong_task_or_level(
    deployment: Deployment, family: str, model: str, level: str, code: str
) -> None:
    expect_error(deployment.get(deployment.level_path(family, model, level)), 400, code)


def two_series_path(deployment: Deployment) -> str:
    return f"/predictions/{deployment.models['two-series']}/studies/{deployment.study.study_uid}"


BAD = "invalid_data_filters"


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"data-filters": "[{"}, "invalid_data_filters"),
        ({"data-filters": "[" * 1200 + "]" * 1200}, "invalid_data_filters"),
        ({"data-filters": json.dumps([0] * 257)}, "invalid_data_filters"),
        ({"data-filters" + "[0]" * 1000: "x"}, "invalid_data_filters"),
        ({"data-filters[0][dataKey]": "series-one", "data-filters": "[]"}, "invalid_data_filters"),
        ({"data-filters[5000][dataKey]": "series-one"}, "invalid_data_filters"),
        ({"data-filters[0][dataKey]": "series-one", "data-filters[0][uuid]": "x"}, "invalid_uid"),
        ({"data-filters": json.dumps([{"dataKey": "\x00", "uuid": "1.2"}])}, BAD),
        ({}, "data_filters_required"),
    ],
    ids=[
        "bad-json", "deep-json", "257-entries", "deep-brackets", "both-forms", "sparse-index",
        "bad-uid", "nul-key", "missing",
    ],
)  # fmt: skip
def test_bad_data_filters_are_400(
    deployment: Deployment, params: dict[str, str], code: str
) -> None:
    expect_error(deployment.get(two_series_path(deployment), params=params), 400, code)


def test_data_filters_on_an_instance_request_are_400(deployment: Deployment) -> None:
    path = deployment.level_path("segmentations", "seg", "instance")
    params = {"data-filters": json.dumps([{"dataKey": "a", "uuid": "1.2"}])}
    expect_error(deployment.get(path, params=params), 400, "data_filters_not_accepted")


def test_unknown_query_parameters_are_ignored(deployment: Deployment) -> None:
    # Viewers add cache busters (?_=...), as the original (Express) ignores them.
    path = deployment.series_path("predictions", "pred")
    response = deployment.get(path, params={"_": "1700000000", "utm_source": "viewer"})
    assert response.status_code == 200, response.text


def test_other_methods_are_405(deployment: Deployment) -> None:
    path = deployment.series_path("segmentations", "seg")
    with deployment.proxy.client() as client:
        for method in ("POST", "PUT", "DELETE", "PATCH", "TRACE"):
            response = client.request(method, path, content=b"{}")
            expect_error(response, 405, "method_not_allowed")


def test_nothing_went_wrong_inside(deployment: Deployment) -> None:
    # Runs last in this module: none of the requests above reached the catch-all.
    log = deployment.proxy.log_text()
    assert "internal_error" not in log and "Traceback" not in log
