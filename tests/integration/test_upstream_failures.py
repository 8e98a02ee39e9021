"""Upstream failures: each gives a clear 502/504 naming the upstream, and the proxy
keeps serving; nothing of it leaks a secret or a traceback."""

from __future__ import annotations

import pytest
from deployment import Deployment, expect_error

# --- upstream failures: clear errors, and the proxy keeps serving ------------------------


@pytest.mark.parametrize(
    ("server", "status", "code", "fragment"),
    [
        ("down", 502, "pacs_error", "unreachable"),
        ("wrong-password", 502, "pacs_auth_failed", "401"),
        ("hanging", 504, "gateway_timeout", "timed out"),
        ("token", 502, "pacs_auth_unavailable", "token server unreachable at token exchange"),
    ],
)
def test_pacs_failures(
    deployment: Deployment, server: str, status: int, code: str, fragment: str
) -> None:
    path = deployment.series_path("segmentations", "seg")
    message = expect_error(
        deployment.get(path, params={"server": deployment.servers[server]}), status, code
    )
    assert f"PACS {deployment.servers[server][:8]}" in message
    assert fragment in message
    assert "wrong" not in message and "one-off-secret" not in message
    assert deployment.get(path).status_code == 200


@pytest.mark.parametrize(
    ("model", "status", "code", "fragment"),
    [
        ("down", 502, "model_error", "unreachable"),
        ("hanging", 504, "gateway_timeout", "timed out"),
        ("not-json", 502, "model_bad_response", "not JSON"),
    ],
)
def test_model_failures(
    deployment: Deployment, model: str, status: int, code: str, fragment: str
) -> None:
    message = expect_error(
        deployment.get(deployment.series_path("segmentations", model)), status, code
    )
    assert f"model {deployment.models[model][:8]}" in message
    assert fragment in message
    assert deployment.get(deployment.series_path("segmentations", "seg")).status_code == 200


def test_no_traceback_or_secret_in_the_log(deployment: Deployment) -> None:
    # Runs after the failure tests above: their errors are in this log.
    log = deployment.proxy.log_text()
    assert "Traceback" not in log
    assert "502" in log and "504" in log
    for secret in ("one-off-secret", "dXNlcjpwYXNz", "dXNlcjp3cm9uZw==", '"wrong"', ":pass@"):
        assert secret not in log
