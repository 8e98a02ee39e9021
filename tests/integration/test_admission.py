"""Admission control over HTTP: with every slot or the whole memory budget taken by
requests a model holds, a new request is answered 503 at once, with Retry-After and
a message saying why; once the held requests end, requests are served again.

The held requests go to a model that accepts the connection and never reads
(``holding_model``); the others to the real example model.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from deployment import expect_error
from harness import (
    LOOPBACK,
    ExampleModel,
    OrthancServer,
    ProxyFactory,
    model_entry,
    new_uid,
    server_entry,
)

from model_proxy.sample_data import SampleStudy, make_study, write_study

ALL_LEVELS = ["/studies", "/studies/series", "/studies/series/instances"]


@contextmanager
def holding_model() -> Iterator[tuple[str, threading.Event]]:
    """A model that accepts connections and never reads them; the event is set at
    the first connection, i.e. once the proxy has admitted a request for it."""
    listener = socket.create_server((LOOPBACK, 0))
    listener.settimeout(0.2)
    connected, stop = threading.Event(), threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(connection)
            connected.set()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{listener.getsockname()[1]}", connected
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        for connection in held:
            connection.close()


def wait_for_503(get: Callable[[], httpx.Response], code: str) -> httpx.Response:
    """Ask until the held request has been admitted and the next one is refused."""
    deadline = time.monotonic() + 20
    while True:
        response = get()
        if response.status_code == 503 or time.monotonic() > deadline:
            break
        assert response.status_code == 200, response.text
        time.sleep(0.1)
    expect_error(response, 503, code)
    return response


def models_for(held_url: str, example_model: ExampleModel) -> dict[str, dict[str, object]]:
    held = {"uri": f"{held_url}/predict", "task": "prediction", "supports": ALL_LEVELS}
    example = model_entry(example_model, "/prediction", "prediction", ALL_LEVELS)
    return {"held": held, "example": example}


def check_refused_while_held(
    start_proxy: ProxyFactory,
    example_model: ExampleModel,
    server: dict[str, object],
    study: SampleStudy,
    extra_args: list[str],
    *,
    code: str,
    flag: str,
) -> None:
    """Hold one series request at a model that never reads; the next request is
    refused with 503 ``code`` naming ``flag``; once the held one ends (504), the
    next request is served."""
    series = study.main_series
    with holding_model() as (held_url, connected), ThreadPoolExecutor(1) as pool:
        entries = models_for(held_url, example_model)
        ids = {name: new_uid() for name in entries}
        proxy = start_proxy(
            {new_uid(): server},
            {ids[name]: entry for name, entry in entries.items()},
            extra_args=[*extra_args, "--model-timeout", "3"],
        )
        series_path = f"/studies/{study.study_uid}/series/{series.series_uid}"
        instance_path = f"{series_path}/instances/{series.sop_uids[0]}"
        with proxy.client() as client:
            held: Future[httpx.Response] = pool.submit(
                client.get, f"/predictions/{ids['held']}{series_path}"
            )
            assert connected.wait(20), "the proxy never called the holding model"
            refused = wait_for_503(
                lambda: client.get(f"/predictions/{ids['example']}{instance_path}"), code
            )
            assert int(refused.headers["retry-after"]) > 0
            assert flag in refused.json()["message"]
            # The held request ends (the model never reads: a 504) and frees its slot.
            expect_error(held.result(timeout=60), 504, "gateway_timeout")
            served = client.get(f"/predictions/{ids['example']}{instance_path}")
            assert served.status_code == 200, served.text


def test_past_the_concurrency_limit_a_request_is_refused_with_503(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    sample_study: SampleStudy,
    example_model: ExampleModel,
) -> None:
    check_refused_while_held(
        start_proxy,
        example_model,
        server_entry(orthanc),
        sample_study,
        ["--max-concurrent-inferences", "1"],
        code="too_many_inferences",
        flag="--max-concurrent-inferences",
    )


@pytest.fixture(scope="module")
def large_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SampleStudy]:
    """A local folder with 1024x1024 slices: each (2 MiB of pixels, about 5 MB of compact
    text) is more than a 2 MiB window once encoded, whatever the encoder's ratio."""
    folder = tmp_path_factory.mktemp("large-folder")
    study = make_study(series_slices=(12,), rows=1024, columns=1024, seed=31)
    write_study(study, folder)
    return folder, study


def test_with_the_memory_budget_in_use_a_request_is_refused_with_503(
    start_proxy: ProxyFactory,
    large_folder: tuple[Path, SampleStudy],
    example_model: ExampleModel,
) -> None:
    folder, study = large_folder
    check_refused_while_held(
        start_proxy,
        example_model,
        {"uri": folder.as_uri(), "isDefault": True},
        study,
        # Two windows of 2 MiB: a held request's instance in flight takes the rest.
        ["--memory-budget", "4MiB", "--max-concurrent-inferences", "2"],
        code="memory_budget_exhausted",
        flag="--memory-budget",
    )
