"""Slowloris over TLS (web/connection_guard.py): 1,100 connections that send their
request head a byte a second against a proxy held to 1,024 open files, while a viewer's
requests keep being answered; every slow connection is closed, and the log says why."""

from __future__ import annotations

import asyncio
import resource
import ssl
import time
from urllib.parse import urlsplit

import httpx
import pytest
from harness import (
    LOOPBACK,
    ExampleModel,
    OrthancServer,
    ProxyFactory,
    ProxyProcess,
    model_entry,
    new_uid,
    server_entry,
)

from model_proxy.sample_data import SampleStudy

SLOW_CONNECTIONS = 1_100
OPEN_FILES = 1_024
# connection_cap(None, 1024): a quarter of the limit kept for upstreams and files.
EXPECTED_CAP = 768
# Long enough that 769 connections are open before the first ones time out, on a
# loaded machine (about 8 s there).
HEAD_TIMEOUT = 30
# A head that never ends: one header line longer than the test lasts at a byte a second.
SLOW_HEAD = b"GET /health HTTP/1.1\r\nHost: proxy\r\nX-Slow: " + b"a" * 600
# TLS handshakes at once: the connections are opened quickly, not all in one burst
# (connections still in their handshake are not client connections yet; see
# docs/security.md).
OPENING_AT_ONCE = 32


@pytest.fixture
def enough_open_files() -> None:
    """This process holds every slow connection: raise its own soft limit if needed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = SLOW_CONNECTIONS + 512
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            pytest.skip(f"the test process needs {wanted} open files; its hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


async def slow_client(
    port: int, context: ssl.SSLContext, opening: asyncio.Semaphore, opened: list[float]
) -> float:
    """Open a TLS connection and send ``SLOW_HEAD`` a byte a second until the proxy
    closes it; returns the seconds it was held."""
    async with opening:
        reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=context)
    started = time.monotonic()
    opened.append(started)
    closed = asyncio.ensure_future(reader.read(65536))
    try:
        for index in range(len(SLOW_HEAD)):
            writer.write(SLOW_HEAD[index : index + 1])
            done, _ = await asyncio.wait([closed], timeout=1.0)
            if done:
                break
        else:
            raise AssertionError("the proxy held a slow connection for the whole head")
        # Closed: EOF, or the answer to a slow head (408), or a reset.
        data = closed.result() if closed.exception() is None else b""
        assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:100]
        return time.monotonic() - started
    finally:
        closed.cancel()
        writer.transport.abort()


async def wait_for_log(proxy: ProxyProcess, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in proxy.log_text():
        assert time.monotonic() < deadline, f"{text!r} was not logged:\n{proxy.log_text()}"
        await asyncio.sleep(0.2)


async def attack_and_use(proxy: ProxyProcess, context: ssl.SSLContext, paths: list[str]) -> None:
    port = urlsplit(proxy.url).port
    assert port is not None
    opening, opened = asyncio.Semaphore(OPENING_AT_ONCE), list[float]()
    slow = [
        asyncio.ensure_future(slow_client(port, context, opening, opened))
        for _ in range(SLOW_CONNECTIONS)
    ]
    try:
        # The cap is reached once 768 slow connections are open (a few seconds).
        await wait_for_log(proxy, f"at the limit of {EXPECTED_CAP} (--max-connections)", 120)
        # A viewer's requests, each on a new connection, while the attack goes on.
        no_reuse = httpx.Limits(max_keepalive_connections=0)
        async with proxy.async_client(limits=no_reuse) as viewer:
            for path in paths:
                response = await viewer.get(path)
                assert response.status_code == 200, response.text
        held = await asyncio.wait_for(asyncio.gather(*slow), HEAD_TIMEOUT + 120)
    finally:
        for task in slow:
            task.cancel()
    assert len(opened) == SLOW_CONNECTIONS
    # None outlived the head deadline (by more than a loaded machine's delays).
    assert max(held) < HEAD_TIMEOUT + 30, max(held)


def test_slow_tls_clients_at_1024_open_files_are_closed_while_requests_are_served(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
    enough_open_files: None,
) -> None:
    model = new_uid()
    proxy = start_proxy(
        {new_uid(): server_entry(orthanc)},
        {model: model_entry(example_model, "/segmentation", "segmentation", ["/studies/series"])},
        open_files=OPEN_FILES,
        extra_args=["--request-head-timeout", str(HEAD_TIMEOUT), "--cache-size", "0"],
    )
    assert proxy.cert is not None
    series = sample_study.main_series
    inference = (
        f"/segmentations/{model}/studies/{sample_study.study_uid}/series/{series.series_uid}"
    )
    paths = ["/health"] * 10 + [inference] * 3
    asyncio.run(attack_and_use(proxy, proxy.cert.ssl_context(), paths))

    log = proxy.log_text()
    assert f"open-file limit {OPEN_FILES}, at most {EXPECTED_CAP} client connections" in log
    assert f"sent no complete request head within {HEAD_TIMEOUT} s" in log
    assert "Too many open files" not in log
    with proxy.client() as client:
        assert client.get("/health").status_code == 200
