"""A model's error answer reaches the viewer as a bounded summary, the same shape for
every size and format, and never with bytes of the input the proxy sent (issue 16,
item 13). The models are real FastAPI apps: FastAPI's own 422 quotes the body it
could not validate in ``"input"``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from app_proxy import Deployment, new_uid
from app_upstreams import serve_in_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse, Response

from model_proxy.models.error_summary import MAX_SUMMARY

pytestmark = pytest.mark.anyio

WINDOW = 16


def echoing_models(received: list[bytes]) -> FastAPI:
    """Endpoints that fail, each quoting what it received in its own way."""
    app = FastAPI()

    @app.post("/strict")
    async def strict(body: dict[str, int]) -> dict[str, int]:
        return body  # the wire format is an array: FastAPI answers 422 quoting it

    @app.post("/detail")
    async def detail(request: Request) -> None:
        body = await request.body()
        received.append(body)
        raise HTTPException(500, detail=f"cannot decode slice: {body[:400]!r}")

    @app.post("/plain")
    async def plain(request: Request) -> PlainTextResponse:
        body = await request.body()
        received.append(body)
        return PlainTextResponse(f"bad input {body[:300].decode('latin-1')}", status_code=400)

    @app.post("/huge")
    async def huge(request: Request) -> Response:
        body = await request.body()
        received.append(body)
        answer = b'{"message": "' + body[:200_000] + b'"}'
        return Response(answer, 500, media_type="application/json")

    @app.post("/plain-message")
    async def plain_message(request: Request) -> Response:
        await request.body()
        raise HTTPException(503, detail={"message": "GPU busy, try later"})

    return app


@pytest.fixture(scope="module")
def received() -> list[bytes]:
    return []


@pytest.fixture(scope="module")
def echo_url(received: list[bytes]) -> Iterator[str]:
    with serve_in_thread(echoing_models(received)) as url:
        yield url


def assert_no_input_in(message: str, sent: bytes) -> None:
    text = sent[:4096].decode("latin-1")
    for start in range(0, len(text) - WINDOW):
        window = text[start : start + WINDOW]
        if not window.replace(" ", "").isalpha():
            assert window not in message, (window, message)


async def test_model_error_bodies_are_summarised_without_input(
    deployment: Deployment,
    tmp_path: Path,
    echo_url: str,
    received: list[bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ids = {name: new_uid() for name in ("strict", "detail", "plain", "huge", "plain-message")}
    models: dict[str, Any] = {
        model_id: {"uri": f"{echo_url}/{name}", "task": "prediction", "supports": ["/studies"]}
        for name, model_id in ids.items()
    }
    study = f"/studies/{deployment.study.study_uid}"
    messages: dict[str, str] = {}
    async with deployment.proxy(tmp_path, models=models) as proxy:
        caplog.set_level(logging.INFO, logger="model_proxy")
        for name, model_id in ids.items():
            response = await proxy.client.get(f"/predictions/{model_id}{study}")
            assert response.status_code == 502, response.text
            body = response.json()
            assert set(body) == {"message", "code"} and body["code"] == "model_failed"
            messages[name] = body["message"]
    log = caplog.text
    assert received, "the echoing models were not called"
    sent = received[0]
    assert sent.startswith(b"[") or sent.startswith(b"{")  # the wire format, JSON framing
    for name, message in messages.items():
        assert message.startswith(f"model {ids[name][:8]}…: answered "), message
        summary = message.split(": ", 2)[-1]
        assert len(summary) <= MAX_SUMMARY, (name, message)
        assert "\n" not in message
        assert_no_input_in(message, sent)
        assert_no_input_in(log, sent)
    # FastAPI's 422 quotes all of the input: over 64 KiB, its message is still found.
    assert messages["strict"].endswith(
        "answered 422 Unprocessable Entity: body: Input should be a valid dictionary"
    )
    assert "cannot decode slice" in messages["detail"]
    assert messages["plain"].startswith(f"model {ids['plain'][:8]}…: answered 400 Bad Request")
    assert "over 64 KiB, not quoted" in messages["huge"]
    assert messages["plain-message"].endswith(
        "answered 503 Service Unavailable: GPU busy, try later"
    )
