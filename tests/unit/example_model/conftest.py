"""Fixtures of the example model's tests: the study, its wire form, the body shapes,
and the example model served by uvicorn on a loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from example_model_bodies import COLUMNS, ROWS, Shape, body_shapes, encode

from model_proxy.example_model import create_app
from model_proxy.sample_data import SampleStudy, make_study


@pytest.fixture(scope="module")
def study() -> SampleStudy:
    return make_study(series_slices=(8, 4), rows=ROWS, columns=COLUMNS, seed=7)


@pytest.fixture(scope="module")
def wire(study: SampleStudy) -> dict[str, str]:
    """SOP UID -> instance string; every other one spaced."""
    return {
        sop: encode(data, spaced=i % 2 == 1)
        for i, (_, sop, data) in enumerate(study.iter_instances())
    }


@pytest.fixture(scope="module")
def shapes(study: SampleStudy, wire: dict[str, str]) -> dict[str, Shape]:
    return body_shapes(study, wire)


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The example model on a free loopback port, served by uvicorn in a thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        yield client
