"""Circuit breakers with real upstreams behind fault-injecting relays: a PACS or model
failing twice in a row is not called again for the cooldown (503 at once, Retry-After,
shown on /status), one trial then closes or reopens it; the caller's mistakes and the
other upstreams are not affected."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from deployment import expect_error
from fault_bench import FaultBench, fault_bench
from faults import respond
from harness import ExampleModel, OrthancServer, TlsCert

from model_proxy.sample_data import SampleStudy

# The breakers of ``bench`` stay open far longer than any test takes, so "open, failing
# fast" holds however slow the machine; each test starts from closed breakers through a
# SIGHUP reload (a new config state has new breakers). ``trial_bench`` goes half-open
# after a short cooldown, for the trial; what it asserts holds at any speed.
COOLDOWN = 600.0
SHORT_COOLDOWN = 1.0
RELOADED = "config reloaded:"  # runtime/reload.py's log line


def breaker_args(cooldown: float) -> list[str]:
    return ["--breaker-failures", "2", "--breaker-cooldown", str(cooldown), "--pacs-retries", "0"]


@pytest.fixture(scope="module")
def bench(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
    tls_cert: TlsCert,
) -> Iterator[FaultBench]:
    with fault_bench(
        tmp_path_factory.mktemp("breaker-bench"),
        orthanc,
        example_model,
        sample_study,
        tls_cert,
        extra_args=breaker_args(COOLDOWN),
    ) as running:
        yield running


@pytest.fixture(scope="module")
def trial_bench(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
    tls_cert: TlsCert,
) -> Iterator[FaultBench]:
    with fault_bench(
        tmp_path_factory.mktemp("breaker-trial-bench"),
        orthanc,
        example_model,
        sample_study,
        tls_cert,
        extra_args=breaker_args(SHORT_COOLDOWN),
    ) as running:
        yield running


def reset_breakers(bench: FaultBench) -> None:
    """SIGHUP: the reloaded config state comes with closed breakers. Waits for the
    reload to be done, so that it cannot reset a breaker in the middle of a test."""
    pid = bench.proxy.process.pid
    assert pid is not None
    reloads = bench.proxy.log_text().count(RELOADED)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while bench.proxy.log_text().count(RELOADED) == reloads:
        assert time.monotonic() < deadline, "no reload after SIGHUP"
        time.sleep(0.1)
    assert breaker_of(bench, "servers", "relay") == {"state": "closed", "failures": 0}
    assert breaker_of(bench, "models", "relay") == {"state": "closed", "failures": 0}


@contextmanager
def no_fault_left(bench: FaultBench) -> Iterator[None]:
    yield
    pending = bench.pacs.pending() + bench.model.pending()
    bench.pacs.clear()
    bench.model.clear()
    assert pending == 0, "a planned fault was never reached"


@pytest.fixture
def fresh(bench: FaultBench) -> Iterator[FaultBench]:
    """``bench`` with every breaker closed; the test leaves no planned fault."""
    reset_breakers(bench)
    with no_fault_left(bench):
        yield bench


@pytest.fixture
def fresh_trial(trial_bench: FaultBench) -> Iterator[FaultBench]:
    """``trial_bench`` with every breaker closed (its cooldown is short: wait it out)."""
    for kind in ("servers", "models"):
        wait_for_breaker(trial_bench, kind, "relay", {"closed", "half-open"})
    # A half-open breaker closes on the next good call.
    assert trial_bench.get(trial_bench.path("relay", "relay")).status_code == 200
    with no_fault_left(trial_bench):
        yield trial_bench


def breaker_of(bench: FaultBench, kind: str, name: str) -> dict[str, Any]:
    ids = bench.servers if kind == "servers" else bench.models
    breaker: dict[str, Any] = bench.status()[kind][ids[name]]["breaker"]
    return breaker


def wait_for_breaker(bench: FaultBench, kind: str, name: str, states: set[str]) -> dict[str, Any]:
    # Polled: a reload, or the short cooldown of trial_bench, takes what it takes.
    deadline = time.monotonic() + SHORT_COOLDOWN + 30
    while True:
        breaker = breaker_of(bench, kind, name)
        if breaker["state"] in states or time.monotonic() > deadline:
            assert breaker["state"] in states, breaker
            return breaker
        time.sleep(0.2)


def test_pacs_breaker_opens_and_fails_fast(fresh: FaultBench) -> None:
    bench = fresh
    label = f"PACS {bench.servers['relay'][:8]}…"
    bench.pacs.plan(*[respond("500 Internal Server Error")] * 2)
    for _ in range(2):
        expect_error(bench.get(bench.path("relay")), 502, "pacs_error")
    breaker = breaker_of(bench, "servers", "relay")
    assert breaker["state"] == "open" and breaker["failures"] == 2
    assert 0 < breaker["retryInSeconds"] <= COOLDOWN
    assert "answered 500 Internal Server Error" in breaker["lastFailure"]

    calls = bench.pacs.connections
    response = bench.get(bench.path("relay"))
    message = expect_error(response, 503, "upstream_unavailable")
    assert message.startswith(f"{label} is unavailable after 2 consecutive failures (last: ")
    assert 1 <= int(response.headers["retry-after"]) <= COOLDOWN
    assert bench.pacs.connections == calls  # failed fast: the PACS was not called
    bench.healthy()  # the other PACS and the model serve on

    with bench.proxy.client() as client:
        page = client.get("/status", headers={"Accept": "text/html"}).text
    assert "open after 2 failures" in page and "answered 500" in page


def test_pacs_breaker_closes_after_a_good_trial(fresh_trial: FaultBench) -> None:
    bench = fresh_trial
    label = f"PACS {bench.servers['relay'][:8]}…"
    bench.pacs.plan(*[respond("500 Internal Server Error")] * 2)
    for _ in range(2):
        expect_error(bench.get(bench.path("relay")), 502, "pacs_error")
    wait_for_breaker(bench, "servers", "relay", {"half-open"})
    assert bench.get(bench.path("relay")).status_code == 200  # the trial
    assert breaker_of(bench, "servers", "relay") == {"state": "closed", "failures": 0}
    assert f"{label} answers again: circuit breaker closed" in bench.proxy.log_text()


def test_pacs_breaker_reopens_when_the_trial_fails(fresh_trial: FaultBench) -> None:
    bench = fresh_trial
    bench.pacs.plan(*[respond("503 Service Unavailable")] * 3)
    for _ in range(2):
        expect_error(bench.get(bench.path("relay")), 502, "pacs_error")
    wait_for_breaker(bench, "servers", "relay", {"half-open"})
    expect_error(bench.get(bench.path("relay")), 502, "pacs_error")  # the failed trial
    breaker = breaker_of(bench, "servers", "relay")
    # Open again for another (short) cooldown: on a slow machine it may be half-open
    # already, but the failed trial counted and did not close it.
    assert breaker["state"] in {"open", "half-open"} and breaker["failures"] == 3, breaker
    assert "answered 503 Service Unavailable" in breaker["lastFailure"]


def test_model_breaker_opens_and_names_the_model(fresh: FaultBench) -> None:
    bench = fresh
    bench.model.plan(*[respond("502 Bad Gateway", b"no GPU")] * 2)
    for _ in range(2):
        expect_error(bench.get(bench.path(model="relay")), 502, "model_failed")
    calls = bench.model.connections
    message = expect_error(bench.get(bench.path(model="relay")), 503, "upstream_unavailable")
    assert message.startswith(f"model {bench.models['relay'][:8]}… is unavailable")
    assert "answered 502 Bad Gateway: no GPU" in message
    assert bench.model.connections == calls
    # The PACS it reads from is not blamed, and other models serve on.
    assert breaker_of(bench, "servers", "orthanc") == {"state": "closed", "failures": 0}
    bench.healthy()


def test_the_callers_mistakes_do_not_open_a_breaker(fresh: FaultBench) -> None:
    bench = fresh
    missing = bench.path("relay").replace(bench.study.study_uid, "1.2.3.4.5.6.7.8.9")
    for _ in range(3):
        expect_error(bench.get(missing), 404, "not_on_pacs")
    bench.model.plan(*[respond("422 Unprocessable Entity", b'{"detail": "bad input"}')] * 3)
    for _ in range(3):
        expect_error(bench.get(bench.path(model="relay")), 502, "model_failed")
    assert breaker_of(bench, "servers", "relay")["state"] == "closed"
    assert breaker_of(bench, "models", "relay")["state"] == "closed"
