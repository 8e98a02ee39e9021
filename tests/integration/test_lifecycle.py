"""Reload on SIGHUP or changed files, graceful SIGTERM: real proxy processes, a real
Orthanc, and a model slow enough to be caught in the middle of a request."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from deployment import expect_error
from harness import OrthancServer, ProxyFactory, ProxyProcess, new_uid, server_entry
from scripted_upstream import delayed_server
from token_gateway import Gateway
from token_server import TokenServer

from model_proxy.sample_data import SampleStudy

SERIES_LEVEL = ["/studies/series"]
RESULT = b'{"1.2.3": {"1.2.3.4": {}}}'


def model(url: str) -> dict[str, Any]:
    return {"uri": f"{url}/segmentation", "task": "segmentation", "supports": SERIES_LEVEL}


def series_path(model_id: str, study: SampleStudy) -> str:
    series = study.series[1]
    return f"/segmentations/{model_id}/studies/{study.study_uid}/series/{series.series_uid}"


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def send_signal(proxy: ProxyProcess, signum: signal.Signals) -> None:
    assert proxy.process.pid is not None
    os.kill(proxy.process.pid, signum)


def write_models(proxy: ProxyProcess, models: dict[str, Any]) -> None:
    # Written aside then renamed, as an editor or a config manager does.
    staging = proxy.config_dir / "models.json.new"
    staging.write_text(json.dumps(models))
    staging.replace(proxy.config_dir / "models.json")


class Background:
    """One request in a thread; ``result()`` waits for its answer or exception."""

    def __init__(self, proxy: ProxyProcess, path: str) -> None:
        self.outcome: httpx.Response | Exception | None = None
        self._thread = threading.Thread(target=self._run, args=(proxy, path), daemon=True)
        self._thread.start()

    def _run(self, proxy: ProxyProcess, path: str) -> None:
        try:
            with proxy.client() as client:
                self.outcome = client.get(path)
        except Exception as exc:
            self.outcome = exc

    def result(self, timeout: float = 60.0) -> httpx.Response | Exception:
        self._thread.join(timeout)
        assert self.outcome is not None, "the request did not finish"
        return self.outcome


# --- graceful shutdown -----------------------------------------------------------------


def test_sigterm_lets_the_running_request_finish_then_exits_0(
    start_proxy: ProxyFactory, orthanc: OrthancServer, sample_study: SampleStudy
) -> None:
    model_id = new_uid()
    with delayed_server(3.0, RESULT) as slow:
        proxy = start_proxy(
            {new_uid(): server_entry(orthanc)},
            {model_id: model(slow.url)},
            extra_args=["--shutdown-grace", "30"],
        )
        running = Background(proxy, series_path(model_id, sample_study))
        assert slow.received.wait(30), "the model never got the request"
        send_signal(proxy, signal.SIGTERM)
        # The listener closes at once: new callers are refused, not queued.
        eventually(lambda: _refused(proxy), timeout=5)
        answer = running.result()
        assert isinstance(answer, httpx.Response), answer
        assert answer.status_code == 200 and answer.content == RESULT
        eventually(lambda: proxy.process.returncode() is not None)
    assert proxy.process.returncode() == 0
    log = proxy.log_text()
    assert "model-proxy stopped; upstream clients closed" in log
    assert "Traceback" not in log


def test_sigterm_grace_period_bounds_the_wait(
    start_proxy: ProxyFactory, orthanc: OrthancServer, sample_study: SampleStudy
) -> None:
    model_id = new_uid()
    with delayed_server(120.0, RESULT) as slow:
        proxy = start_proxy(
            {new_uid(): server_entry(orthanc)},
            {model_id: model(slow.url)},
            extra_args=["--shutdown-grace", "1"],
        )
        running = Background(proxy, series_path(model_id, sample_study))
        assert slow.received.wait(30)
        send_signal(proxy, signal.SIGTERM)
        # Far below the model's 120 s: the grace period, then the request is cut.
        eventually(lambda: proxy.process.returncode() is not None, timeout=20)
        answer = running.result()
        assert not (isinstance(answer, httpx.Response) and answer.status_code == 200)
    assert proxy.process.returncode() == 0
    assert "model-proxy stopped; upstream clients closed" in proxy.log_text()


def _refused(proxy: ProxyProcess) -> bool:
    try:
        with proxy.client(timeout=2.0) as client:
            client.get("/health")
    except httpx.ConnectError:
        return True
    return False


# --- reload ----------------------------------------------------------------------------


def test_sighup_puts_a_new_model_in_force_and_refuses_an_invalid_config(
    start_proxy: ProxyFactory, orthanc: OrthancServer, sample_study: SampleStudy
) -> None:
    first, second = new_uid(), new_uid()
    with delayed_server(0.0, RESULT) as fast:
        proxy = start_proxy({new_uid(): server_entry(orthanc)}, {first: model(fast.url)})
        with proxy.client() as client:
            expect_error(client.get(series_path(second, sample_study)), 404, "unknown_model")

            write_models(proxy, {first: model(fast.url), second: model(fast.url)})
            send_signal(proxy, signal.SIGHUP)
            eventually(lambda: client.get(series_path(second, sample_study)).status_code == 200)

            broken = model(fast.url) | {"task": "painting"}
            write_models(proxy, {first: model(fast.url), second: broken})
            send_signal(proxy, signal.SIGHUP)
            eventually(lambda: "config reload refused" in proxy.log_text())
            # Both models still answer: the previous config stays in force.
            for model_id in (first, second):
                assert client.get(series_path(model_id, sample_study)).status_code == 200
    log = proxy.log_text()
    assert "models.json" in log and "painting" in log
    assert proxy.process.running()


def test_a_request_running_during_a_reload_finishes_on_the_old_config(
    start_proxy: ProxyFactory, orthanc: OrthancServer, sample_study: SampleStudy
) -> None:
    model_id = new_uid()
    with delayed_server(3.0, RESULT) as slow:
        proxy = start_proxy({new_uid(): server_entry(orthanc)}, {model_id: model(slow.url)})
        running = Background(proxy, series_path(model_id, sample_study))
        assert slow.received.wait(30)
        write_models(proxy, {})
        send_signal(proxy, signal.SIGHUP)
        eventually(lambda: "config reloaded: 1 servers, 0 models" in proxy.log_text())
        with proxy.client() as client:
            expect_error(client.get(series_path(model_id, sample_study)), 404, "unknown_model")
        answer = running.result()
        assert isinstance(answer, httpx.Response), answer
        assert answer.status_code == 200 and answer.content == RESULT
    log = proxy.log_text()
    assert "1 requests finish on the previous one" in log
    assert "previous config's upstream clients closed after its last request" in log


def test_a_reload_does_not_exchange_the_one_off_pacs_token_again(
    start_proxy: ProxyFactory,
    token_pacs: Gateway,
    token_server: TokenServer,
    sample_study: SampleStudy,
) -> None:
    # The auth token is single-use: a reload that exchanged it again would lock the
    # proxy out of the PACS. The new state finds the tokens in the data folder.
    model_id, server_id = new_uid(), new_uid()
    with delayed_server(0.0, RESULT) as fast:
        proxy = start_proxy(
            {server_id: token_pacs.server_entry("token")}, {model_id: model(fast.url)}
        )
        with proxy.client() as client:
            assert client.get(series_path(model_id, sample_study)).status_code == 200
            write_models(proxy, {model_id: model(fast.url), new_uid(): model(fast.url)})
            send_signal(proxy, signal.SIGHUP)
            eventually(lambda: "config reloaded: 1 servers, 2 models" in proxy.log_text())
            assert client.get(series_path(model_id, sample_study)).status_code == 200
    assert token_server.successes["exchange"] == 1
    assert token_server.calls["exchange"] == 1


def test_watch_config_reloads_changed_files_without_a_signal(
    start_proxy: ProxyFactory, orthanc: OrthancServer, sample_study: SampleStudy
) -> None:
    first, second = new_uid(), new_uid()
    with delayed_server(0.0, RESULT) as fast:
        proxy = start_proxy(
            {new_uid(): server_entry(orthanc)},
            {first: model(fast.url)},
            extra_args=["--watch-config", "0.5"],
        )
        write_models(proxy, {second: model(fast.url)})
        with proxy.client() as client:
            eventually(lambda: client.get(series_path(second, sample_study)).status_code == 200)
            expect_error(client.get(series_path(first, sample_study)), 404, "unknown_model")
    assert "config files changed" in proxy.log_text()


@pytest.mark.parametrize("flag", ["--shutdown-grace", "--watch-config"])
@pytest.mark.parametrize("value", ["-1", "soon", "nan", "inf"])
def test_bad_durations_are_refused_at_start(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from model_proxy.cli.commands import main

    assert main(["serve", "--config-dir", "/nonexistent", flag, value]) == 2
    assert f"{flag} must be zero or a positive number of seconds" in capsys.readouterr().err
