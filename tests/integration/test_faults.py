"""Fault injection: a PACS and a model that refuse, fail, cut, garble or stall. Each
fault gives the status and message of docs/reliability.md, transient PACS faults are
retried or resumed, and after each one a good request to the healthy Orthanc and
model still succeeds."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from deployment import expect_error
from fault_bench import PACS_TIMEOUT, FaultBench, fault_bench, instance_count
from faults import cut_after, reset, respond, slow_first_byte
from harness import ExampleModel, OrthancServer, TlsCert

from model_proxy.sample_data import SampleStudy

BOUNDARY = "fault-bench-boundary"
MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@pytest.fixture(scope="module")
def bench(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
    tls_cert: TlsCert,
) -> Iterator[FaultBench]:
    # Breakers are tested on their own (test_breakers.py): here every fault must reach
    # the upstream, so they never open.
    with fault_bench(
        tmp_path_factory.mktemp("fault-bench"),
        orthanc,
        example_model,
        sample_study,
        tls_cert,
        extra_args=["--breaker-failures", "1000"],
    ) as running:
        yield running


@pytest.fixture(autouse=True)
def fresh_relays(bench: FaultBench) -> Iterator[None]:
    yield
    pending = bench.pacs.pending() + bench.model.pending()
    bench.pacs.clear()
    bench.model.clear()
    assert pending == 0, "a planned fault was never reached"


@pytest.fixture(scope="module")
def expected(bench: FaultBench) -> dict[str, Any]:
    """The study's prediction without any fault."""
    return bench.healthy()


def multipart(*parts: bytes, close: bool = True) -> bytes:
    body = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
        for part in parts
    )
    return body + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def pacs_error(bench: FaultBench, path: str, status: int, code: str) -> str:
    message = expect_error(bench.get(path), status, code)
    assert f"PACS {bench.servers['relay'][:8]}" in message or "PACS" in message
    bench.healthy()
    return message


# --- the PACS ---------------------------------------------------------------------------


def test_pacs_refusing_connections(bench: FaultBench) -> None:
    message = expect_error(bench.get(bench.path("refused")), 502, "pacs_error")
    assert message.startswith(f"PACS {bench.servers['refused'][:8]}")
    assert "unreachable" in message and "(tried 3 times)" in message
    bench.healthy()


def test_pacs_500_is_reported_not_retried(bench: FaultBench) -> None:
    before = bench.pacs.connections
    bench.pacs.plan(respond("500 Internal Server Error", b"database is down"))
    message = expect_error(bench.get(bench.path("relay")), 502, "pacs_error")
    assert message.startswith(f"PACS {bench.servers['relay'][:8]}")
    assert "answered 500 Internal Server Error for study" in message
    assert "tried" not in message
    assert bench.pacs.connections == before + 1
    bench.healthy()


def test_pacs_503_is_retried_after_its_retry_after(
    bench: FaultBench, expected: dict[str, Any]
) -> None:
    before = bench.pacs.connections
    bench.pacs.plan(respond("503 Service Unavailable", headers={"Retry-After": "1"}))
    response = bench.get(bench.path("relay"))
    assert response.status_code == 200, response.text
    assert response.json() == expected
    assert bench.pacs.connections == before + 2
    label = f"PACS {bench.servers['relay'][:8]}…"
    assert f"{label}: answered 503 for study" in bench.proxy.log_text()
    assert "; retry 1 in 1.0 s" in bench.proxy.log_text()


def test_pacs_asking_to_retry_much_later_is_not_waited_for(bench: FaultBench) -> None:
    before = bench.pacs.connections
    bench.pacs.plan(respond("503 Service Unavailable", headers={"Retry-After": "3600"}))
    message = expect_error(bench.get(bench.path("relay")), 502, "pacs_error")
    assert "answered 503 Service Unavailable" in message
    assert bench.pacs.connections == before + 1
    bench.healthy()


def test_pacs_overloaded_on_every_attempt(bench: FaultBench) -> None:
    bench.pacs.plan(*[respond("503 Service Unavailable")] * 3)
    message = expect_error(bench.get(bench.path("relay")), 502, "pacs_error")
    assert "answered 503 Service Unavailable" in message and "(tried 3 times)" in message
    bench.healthy()


def test_pacs_resetting_the_connection_once(bench: FaultBench, expected: dict[str, Any]) -> None:
    bench.pacs.plan(reset())
    response = bench.get(bench.path("relay"))
    assert response.status_code == 200, response.text
    assert response.json() == expected


def test_pacs_cutting_the_connection_mid_multipart_is_resumed(
    bench: FaultBench, expected: dict[str, Any]
) -> None:
    # 300 kB: about 8 of the study's 36 instances have reached the model by then.
    bench.pacs.plan(cut_after(300_000))
    response = bench.get(bench.path("relay"))
    assert response.status_code == 200, response.text
    result = response.json()
    # Every instance exactly once: the model's count and volumes match a clean run.
    assert instance_count(result, bench.study.study_uid) == 36
    assert result == expected
    assert "instances; resuming (retry 1" in bench.proxy.log_text()


def test_pacs_cutting_the_connection_on_every_attempt(bench: FaultBench) -> None:
    bench.pacs.plan(*[cut_after(300_000)] * 3)
    message = expect_error(bench.get(bench.path("relay")), 502, "pacs_bad_response")
    assert message.startswith(f"PACS {bench.servers['relay'][:8]}")
    assert "cut short" in message and "(tried 3 times)" in message
    bench.healthy()


@pytest.mark.parametrize("framing", ["close-delimited", "chunked"])
def test_pacs_truncated_part_is_resumed_without_duplicates(bench: FaultBench, framing: str) -> None:
    series = bench.study.series[0]
    first, second = [part10 for s, _, part10 in bench.study.iter_instances() if s is series][:2]
    # One whole instance, then half of the next, then the connection closes.
    truncated = multipart(first, second[: len(second) // 2], close=False)
    if framing == "chunked":  # one chunk announced whole, sent half
        size = 2 * len(truncated)
        fault = respond(
            "200 OK",
            f"{size:x}\r\n".encode() + truncated,
            MULTIPART,
            {"Transfer-Encoding": "chunked"},
            length=False,
        )
    else:
        fault = respond("200 OK", truncated, MULTIPART, length=False)
    resumed = "after 1 instances; resuming (retry 1"
    before = bench.proxy.log_text().count(resumed)
    bench.pacs.plan(fault)
    response = bench.get(bench.path("relay", series=True))
    assert response.status_code == 200, response.text
    # The first instance came twice from the PACS and went once to the model.
    assert instance_count(response.json(), bench.study.study_uid) == len(series.sop_uids)
    assert bench.proxy.log_text().count(resumed) > before  # stdout and log file: twice


def test_pacs_truncated_part_on_every_attempt(bench: FaultBench) -> None:
    first = next(bench.study.iter_instances())[2]
    truncated = multipart(first[: len(first) // 2], close=False)
    bench.pacs.plan(*[respond("200 OK", truncated, MULTIPART, length=False)] * 3)
    message = expect_error(bench.get(bench.path("relay", series=True)), 502, "pacs_bad_response")
    assert "cut short: multipart stream ended inside a part (truncated)" in message
    assert "(tried 3 times)" in message
    bench.healthy()


@pytest.mark.parametrize(
    ("body", "content_type", "fragment"),
    [
        (b"\x00garbage" * 10_000, MULTIPART, "no multipart boundary found"),
        (
            f"--{BOUNDARY}\r\nthis line is no header\r\n\r\nxx".encode(),
            MULTIPART,
            "malformed part header line",
        ),
        (b"<html>Login</html>", "text/html", "expected multipart/related"),
    ],
    ids=["no-boundary", "bad-part-header", "html"],
)
def test_pacs_sending_garbage_is_reported_not_retried(
    bench: FaultBench, body: bytes, content_type: str, fragment: str
) -> None:
    before = bench.pacs.connections
    bench.pacs.plan(respond("200 OK", body, content_type))
    message = expect_error(bench.get(bench.path("relay")), 502, "pacs_bad_response")
    assert message.startswith(f"PACS {bench.servers['relay'][:8]}")
    assert fragment in message
    assert bench.pacs.connections == before + 1
    bench.healthy()


def test_pacs_slow_to_first_byte_once(bench: FaultBench, expected: dict[str, Any]) -> None:
    bench.pacs.plan(slow_first_byte(PACS_TIMEOUT * 2.5))
    response = bench.get(bench.path("relay"))
    assert response.status_code == 200, response.text
    assert response.json() == expected


def test_pacs_slow_to_first_byte_on_every_attempt(bench: FaultBench) -> None:
    bench.pacs.plan(*[slow_first_byte(PACS_TIMEOUT * 2.5)] * 3)
    message = expect_error(bench.get(bench.path("relay")), 504, "gateway_timeout")
    assert message == (
        f"PACS {bench.servers['relay'][:8]}…: timed out while waiting for data (tried 3 times)"
    )
    bench.healthy()


# --- the model --------------------------------------------------------------------------


def model_error(bench: FaultBench, model: str, status: int, code: str) -> str:
    message = expect_error(bench.get(bench.path(model=model)), status, code)
    assert message.startswith(f"model {bench.models[model][:8]}…: "), message
    bench.healthy()
    return message


def test_model_refusing_connections_is_not_retried_by_default(bench: FaultBench) -> None:
    message = model_error(bench, "refused", 502, "model_error")
    assert "unreachable" in message
    label = f"model {bench.models['refused'][:8]}…"
    assert f"{label}: unreachable (Connection refused); retry" not in (bench.proxy.log_text())


def test_model_that_opts_in_is_retried_before_its_body_is_sent(bench: FaultBench) -> None:
    message = model_error(bench, "retrying", 502, "model_error")
    assert "unreachable" in message
    log = bench.proxy.log_text()
    label = f"model {bench.models['retrying'][:8]}…"
    for retry in (1, 2):
        assert f"{label}: unreachable (Connection refused); retry {retry} in" in log


def test_model_hanging(bench: FaultBench) -> None:
    message = model_error(bench, "hanging", 504, "gateway_timeout")
    # It reads nothing: once the socket buffers are full the upload stalls too.
    assert message.endswith(("timed out while waiting for data", "timed out while sending data"))


@pytest.mark.parametrize(
    ("status_line", "body", "content_type", "code", "fragment"),
    [
        ("200 OK", b"<html>oops</html>", "text/html", "model_bad_response", "not JSON"),
        ("200 OK", b"", "application/json", "model_bad_response", "empty body"),
        (
            "422 Unprocessable Entity",
            b'{"detail": "no lungs found"}',
            "application/json",
            "model_failed",
            "answered 422 Unprocessable Entity: no lungs found",
        ),
        (
            "500 Internal Server Error",
            b'{"message": "CUDA out of memory"}',
            "application/json",
            "model_failed",
            "answered 500 Internal Server Error: CUDA out of memory",
        ),
        (
            "503 Service Unavailable",
            b"overloaded",
            "text/plain",
            "model_failed",
            "answered 503 Service Unavailable: overloaded",
        ),
    ],
    ids=["not-json", "empty", "422", "500", "503"],
)
def test_model_answering_badly_is_reported_not_retried(
    bench: FaultBench, status_line: str, body: bytes, content_type: str, code: str, fragment: str
) -> None:
    before = bench.model.connections
    bench.model.plan(respond(status_line, body, content_type))
    message = model_error(bench, "relay", 502, code)
    assert fragment in message
    assert bench.model.connections == before + 1


def test_model_cutting_its_response(bench: FaultBench) -> None:
    # Past the status line and headers (about 130 bytes), inside the JSON.
    bench.model.plan(cut_after(250))
    message = model_error(bench, "relay", 502, "model_error")
    assert "broke the HTTP exchange" in message


def test_model_resetting_the_connection(bench: FaultBench) -> None:
    bench.model.plan(reset())
    message = model_error(bench, "relay", 502, "model_error")
    assert "broke the HTTP exchange" in message or "broke the connection" in message


def test_no_traceback_in_the_log(bench: FaultBench) -> None:
    # Runs last in this module: every fault above is in this log.
    log = bench.proxy.log_text()
    assert "Traceback" not in log
    assert "unexpected error" not in log
