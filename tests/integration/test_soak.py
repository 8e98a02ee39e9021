"""Soak: 200 concurrent clients for 60 s against one proxy, mixing good requests (real
Orthanc, the example model) with every upstream fault and bad input (soak_load.py).

Only behaviour is asserted, nothing that depends on the machine's speed: every answer is
the documented one (an admitted good request gets exactly the result it gets alone; a
5xx only for an injected fault, naming the faulty upstream, or the admission control's
503 with Retry-After at capacity), the proxy's memory stays flat after warm-up, its file
descriptors come back to where they were, and its log holds no error that an injected
fault does not explain. How many good requests were served, and how fast, is a figure
of the machine: ``benchmarks/soak.py`` prints it. Loopback only; bounded in time.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator

import pytest
from harness import ExampleModel, OrthancServer, ProxyFactory, ProxyProcess
from soak_load import (
    CLIENTS,
    PROXY_ARGS,
    faulty_upstreams,
    open_fds,
    run_load,
    soak_setup,
    unexplained_log_lines,
)

from model_proxy.sample_data import SampleStudy

pytestmark = pytest.mark.soak

SOAK_SECONDS = 60.0
WARM_UP_SECONDS = 20.0
WINDOW_SECONDS = 10.0
RSS_GROWTH_LIMIT = 1.10
# Idle upstream keep-alive connections come and go; a leak over thousands of requests
# from 200 clients would be hundreds of descriptors.
FD_SLACK = 10


@pytest.fixture
def faulty(sample_study: SampleStudy) -> Iterator[dict[str, str]]:
    with faulty_upstreams(sample_study) as urls:
        yield urls


def settled_fds(proxy: ProxyProcess, baseline: int) -> int:
    """The proxy's open fds once idle keep-alive connections have gone (2 s upstream,
    5 s uvicorn): polled up to a generous deadline, never a fixed wait."""
    assert proxy.process.pid is not None
    deadline = time.monotonic() + 30
    while True:
        fds = open_fds(proxy.process.pid)
        if fds <= baseline + FD_SLACK or time.monotonic() > deadline:
            return fds
        time.sleep(0.5)


def test_soak_200_clients_for_60_seconds(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
    faulty: dict[str, str],
) -> None:
    setup = soak_setup(orthanc, example_model, sample_study, faulty)
    proxy = start_proxy(setup.servers_json, setup.models_json, tls=False, extra_args=PROXY_ARGS)
    assert proxy.process.pid is not None

    # The answers a good request gets alone: under load, an admitted one must get the same.
    with proxy.client() as client:
        alone = [client.get(path) for path in (setup.instance_path, setup.series_path)]
    assert [r.status_code for r in alone] == [200, 200], alone[0].text
    kinds = setup.kinds(alone[0].content, alone[1].content)
    fds_before = open_fds(proxy.process.pid)

    tally = asyncio.run(run_load(proxy.url, kinds, proxy.process.pid, SOAK_SECONDS))
    print(f"\nsoak: {CLIENTS} clients, answers {dict(sorted(tally.answers.items()))}")

    # Every answer was the documented one, and every kind was exercised.
    assert not tally.problems, f"{len(tally.problems)} problems, first: {tally.problems[:10]}"
    counts = tally.kinds()
    assert all(counts[kind.name] >= 1 for kind in kinds), counts
    # Good requests: their result, or the admission control's 503 (checked above).
    good = {status for (kind, status) in tally.answers if kind.startswith("good-")}
    assert good <= {200, 503}, good
    # Every 5xx is an injected fault's or a refusal at capacity (checked per kind above).
    assert any(status >= 500 for (kind, status) in tally.answers if not kind.startswith("good-"))

    # Memory: flat within 10 % once warm.
    first = [
        kib for at, kib in tally.rss_kib if WARM_UP_SECONDS <= at < WARM_UP_SECONDS + WINDOW_SECONDS
    ]
    last = [kib for at, kib in tally.rss_kib if at >= SOAK_SECONDS - WINDOW_SECONDS]
    assert first and last, tally.rss_kib
    growth = statistics.mean(last) / statistics.mean(first)
    assert growth <= RSS_GROWTH_LIMIT, tally.rss_kib

    # File descriptors: back to where they were once the load has stopped.
    fds_after = settled_fds(proxy, fds_before)
    assert fds_after <= fds_before + FD_SLACK, (fds_before, fds_after)

    # Still serving the same result, and its log holds nothing an injected fault does
    # not explain.
    with proxy.client() as client:
        assert client.get(setup.series_path).content == alone[1].content
    unexplained = unexplained_log_lines(proxy.log_text(), setup.faulty)
    assert not unexplained, unexplained[:20]
