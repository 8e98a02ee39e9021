"""``--redis`` against a real ``redis-server``: the proxy connects with the password from
a file and never prints it, and a Redis that is not there at start is a warning while
requests are still served (docs/replicas.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from harness import ExampleModel, OrthancServer, ProxyFactory, model_entry, new_uid, server_entry
from processes import LOOPBACK, free_port
from redis_server import start_redis

from model_proxy.sample_data import SampleStudy

pytestmark = pytest.mark.integration

PASSWORD = "redis-s3cret-for-the-test"
SERIES_ONLY = ["/studies/series"]


def _serve_one_request(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    study: SampleStudy,
    **options: Any,
) -> str:
    """Start a proxy with ``options`` (start_proxy's), have it segment a series, stop
    it; its log."""
    model_id = new_uid()
    proxy = start_proxy(
        {new_uid(): server_entry(orthanc)},
        {model_id: model_entry(example_model, "/segmentation", "segmentation", SERIES_ONLY)},
        **options,
    )
    series = study.series[0]
    path = f"/segmentations/{model_id}/studies/{study.study_uid}/series/{series.series_uid}"
    with proxy.client() as client:
        answer = client.get(path)
    assert answer.status_code == 200, answer.text
    proxy.stop()
    return proxy.log_text()


def test_proxy_connects_with_the_password_file_and_never_prints_it(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
    tmp_path: Path,
) -> None:
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD + "\n")
    with start_redis(tmp_path / "redis", password=PASSWORD) as redis:
        args = ["--redis", redis.url, "--redis-password-file", str(secret)]
        log = _serve_one_request(start_proxy, orthanc, example_model, sample_study, extra_args=args)
    assert f"shared state: Redis at {redis.url}" in log
    assert "does not answer" not in log
    assert PASSWORD not in log


def test_redis_missing_at_start_is_a_warning_and_requests_are_served(
    start_proxy: ProxyFactory,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    sample_study: SampleStudy,
) -> None:
    nobody = f"redis://:pw-in-the-url@{LOOPBACK}:{free_port()}/0"
    # Through the environment, as a URL with a password should be given: the harness
    # writes the command line into the log it reads.
    env = {"MODEL_PROXY_REDIS": nobody}
    log = _serve_one_request(start_proxy, orthanc, example_model, sample_study, env=env)
    assert f"Redis at redis://:***@{LOOPBACK}" in log
    assert "does not answer" in log
    assert "pw-in-the-url" not in log
