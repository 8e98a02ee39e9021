"""A PACS that never answers is reported within --pacs-answer-deadline, retries
included (pacs/dicomweb.py), while a PACS that answers at once and then streams slowly,
for longer than that deadline, is never cut.

Both PACS are loopback servers of the test: one that reads requests and never answers
(a fault a real server cannot be made to produce), one that sends the instances of the
sample series a part at a time with pauses (a slow archive)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from deployment import expect_error
from harness import ExampleModel, ProxyFactory, model_entry, new_uid
from relay_sockets import listening

from model_proxy.sample_data import SampleStudy

DEADLINE = 3
BOUNDARY = "slow-archive"
# Pauses between parts: all of them together last longer than the deadline, each is
# well within the idle timeout.
PAUSE = 0.25


@contextmanager
def silent_pacs() -> Iterator[tuple[str, list[socket.socket]]]:
    """Accepts connections and never answers; yields its DICOMweb URL and the
    connections it holds (one per attempt of the proxy)."""
    held: list[socket.socket] = []
    with listening(held.append) as url:
        try:
            yield f"{url}/dicom-web", held
        finally:
            for connection in held:
                connection.close()


@contextmanager
def slow_archive(parts: list[bytes]) -> Iterator[str]:
    """Answers every request at once with a multipart head, then sends ``parts`` one
    at a time, ``PAUSE`` seconds apart; yields its DICOMweb URL."""

    def serve(connection: socket.socket) -> None:
        with connection, suppress(OSError):
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                data += chunk
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: multipart/related;"
                b' type="application/dicom"; boundary=' + BOUNDARY.encode() + b"\r\n\r\n"
            )
            for part in parts:
                connection.sendall(
                    f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + part
                    + b"\r\n"
                )
                time.sleep(PAUSE)
            connection.sendall(f"--{BOUNDARY}--\r\n".encode())

    with listening(serve) as url:
        yield f"{url}/dicom-web"


def test_a_pacs_that_never_answers_is_reported_within_the_deadline(
    start_proxy: ProxyFactory, example_model: ExampleModel, sample_study: SampleStudy
) -> None:
    model = new_uid()
    with silent_pacs() as (pacs_url, held):
        server = new_uid()
        proxy = start_proxy(
            {server: {"uri": pacs_url, "isDefault": True}},
            {model: model_entry(example_model, "/prediction", "prediction", ["/studies/series"])},
            # An idle timeout far past the deadline: only the deadline can end the wait.
            extra_args=[
                "--pacs-answer-deadline",
                str(DEADLINE),
                "--pacs-timeout",
                "120",
                "--cache-size",
                "0",
            ],
        )
        series = sample_study.main_series
        path = f"/predictions/{model}/studies/{sample_study.study_uid}/series/{series.series_uid}"
        with proxy.client() as client:
            message = expect_error(client.get(path), 504, "gateway_timeout")
    assert message.startswith(f"PACS {server[:8]}…: no answer for series")
    assert f"within {DEADLINE} s (--pacs-answer-deadline)" in message
    # One attempt, cut by the deadline, not by the idle timeout of 120 s.
    assert len(held) == 1


def test_a_pacs_streaming_slowly_past_the_deadline_is_not_cut(
    start_proxy: ProxyFactory, example_model: ExampleModel, sample_study: SampleStudy
) -> None:
    series = sample_study.main_series
    parts = [part10 for of, _, part10 in sample_study.iter_instances() if of is series]
    assert len(parts) * PAUSE > DEADLINE
    model = new_uid()
    with slow_archive(parts) as pacs_url:
        proxy = start_proxy(
            {new_uid(): {"uri": pacs_url, "isDefault": True}},
            {model: model_entry(example_model, "/prediction", "prediction", ["/studies/series"])},
            extra_args=[
                "--pacs-answer-deadline",
                str(DEADLINE),
                "--pacs-timeout",
                "10",
                "--cache-size",
                "0",
            ],
        )
        path = f"/predictions/{model}/studies/{sample_study.study_uid}/series/{series.series_uid}"
        with proxy.client() as client:
            response = client.get(path)
    assert response.status_code == 200, response.text
    assert "instances=24" in proxy.log_text()
