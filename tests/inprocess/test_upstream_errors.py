"""Upstream failures become the proxy's 502/504 naming the upstream, in process: a
refused or failing model, a PACS that refuses the password or is not there."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from app_proxy import Deployment, new_uid
from app_upstreams import cutting_model_app, serve_in_thread

pytestmark = pytest.mark.anyio

SECRET = "Pacs-Secret-5e1d"


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def expect_upstream_error(response_json: object, status: int, actual: int, label: str) -> str:
    assert actual == status, response_json
    assert isinstance(response_json, dict) and set(response_json) == {"message", "code"}
    message = response_json["message"]
    assert isinstance(message, str) and message.startswith(label), message
    assert "Traceback" not in message
    return message


async def test_model_failures_name_the_model(deployment: Deployment, tmp_path: Path) -> None:
    down, failing = new_uid(), new_uid()
    models = deployment.models_json()
    models[down] = {"uri": f"{closed_port_url()}/x", "task": "prediction", "supports": ["/studies"]}
    # The example model answers 404 for a path it does not serve.
    models[failing] = deployment.model("/no-such-endpoint", "prediction", ["/studies"])
    study = f"/studies/{deployment.study.study_uid}"
    async with deployment.proxy(tmp_path, models=models) as proxy:
        refused = await proxy.client.get(f"/predictions/{down}{study}")
        not_found = await proxy.client.get(f"/predictions/{failing}{study}")
        status = (await proxy.client.get("/status", headers={"Accept": "application/json"})).json()
    expect_upstream_error(refused.json(), 502, refused.status_code, f"model {down[:8]}")
    expect_upstream_error(not_found.json(), 502, not_found.status_code, f"model {failing[:8]}")
    assert status["models"][down]["ok"] is False


async def test_pacs_failures_name_the_server(deployment: Deployment, tmp_path: Path) -> None:
    wrong_password, absent = new_uid(), new_uid()
    servers = deployment.servers_json()
    servers[wrong_password] = servers[deployment.servers["pacs"]] | {"password": SECRET}
    servers[absent] = {"uri": f"{closed_port_url()}/dicom-web", "isDefault": False}
    path = deployment.path("seg", "series")
    async with deployment.proxy(tmp_path, servers=servers) as proxy:
        unauthorized = await proxy.client.get(path, params={"server": wrong_password})
        refused = await proxy.client.get(path, params={"server": absent})
        missing = await proxy.client.get(
            path.replace(deployment.study.study_uid, "1.2.3.4"),
            params={"server": deployment.servers["pacs"]},
        )
    message = expect_upstream_error(
        unauthorized.json(), 502, unauthorized.status_code, f"PACS {wrong_password[:8]}"
    )
    assert SECRET not in message  # the password never shows
    expect_upstream_error(refused.json(), 502, refused.status_code, f"PACS {absent[:8]}")
    assert missing.status_code == 404, missing.text


@pytest.fixture(scope="module")
def cutting_model_url() -> Iterator[str]:
    # Big enough that the proxy has started its answer when the model breaks off.
    with serve_in_thread(cutting_model_app(b'{"1.2.3": [' + b"0, " * 200_000)) as url:
        yield url


async def test_a_model_that_breaks_off_mid_answer(
    deployment: Deployment, tmp_path: Path, cutting_model_url: str
) -> None:
    cutting = new_uid()
    models = deployment.models_json()
    models[cutting] = {
        "uri": f"{cutting_model_url}/predict",
        "task": "prediction",
        "supports": ["/studies/series"],
    }
    path = deployment.path("pred", "series").replace(deployment.models["pred"], cutting)
    async with deployment.proxy(tmp_path, models=models) as proxy:
        response = await proxy.client.get(path, headers={"X-Request-ID": "cut-1"})
        again = await proxy.client.get(deployment.path("pred", "series"))
    # Either refused before the answer started (502 naming the model), or the answer
    # stops short: never a complete-looking result, never a 500.
    if response.status_code == 200:
        with pytest.raises(ValueError):
            response.json()
    else:
        expect_upstream_error(response.json(), 502, response.status_code, f"model {cutting[:8]}")
    assert again.status_code == 200  # the proxy serves on
    (record,) = [r for r in proxy.audit_records() if r["requestId"] == "cut-1"]
    assert record["status"] in (200, 502) and record["code"] != "ok"
