"""What the PACS authentication tests share: a proxy in front of a token-protected
Orthanc with the example model, and the requests and checks they make through it.
Tests get one through the ``auth_setup`` fixture (conftest.py):

    def test_token(auth_setup: AuthSetupFactory, token_pacs: Gateway) -> None:
        setup = auth_setup(token_pacs.server_entry("token"))
        assert setup.infer().status_code == 200
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from harness import ExampleModel, ProxyFactory, ProxyProcess, http_client, model_entry, new_uid
from token_server import TokenServer

from model_proxy.sample_data import SampleStudy

ALL_LEVELS = ["/studies", "/studies/series", "/studies/series/instances"]
STATUS_ON = {"ZHIVA_SHOW_STATUS_PAGE": "true"}


@dataclass
class AuthSetup:
    proxy: ProxyProcess
    server_id: str
    model_id: str
    study: SampleStudy

    @classmethod
    def start(
        cls,
        start_proxy: ProxyFactory,
        model: ExampleModel,
        study: SampleStudy,
        server: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        extra_args: Iterable[str] = (),
    ) -> AuthSetup:
        server_id, model_id = new_uid(), new_uid()
        models = {model_id: model_entry(model, "/segmentation", "segmentation", ALL_LEVELS)}
        proxy = start_proxy(
            {server_id: dict(server)},
            models,
            env={**STATUS_ON, **(env or {})},
            extra_args=list(extra_args),
        )
        return cls(proxy, server_id, model_id, study)

    @property
    def instance_path(self) -> str:
        """The lightest inference route: one instance of the sample study."""
        series = self.study.series[0]
        return (
            f"/segmentations/{self.model_id}/studies/{self.study.study_uid}"
            f"/series/{series.series_uid}/instances/{series.sop_uids[0]}"
        )

    @property
    def series_path(self) -> str:
        series = self.study.series[0]
        return (
            f"/segmentations/{self.model_id}/studies/{self.study.study_uid}"
            f"/series/{series.series_uid}"
        )

    @property
    def token_file(self) -> Path:
        return self.proxy.data_dir / "tokens" / f"{self.server_id}.json"

    def infer(self, path: str | None = None) -> httpx.Response:
        with self.proxy.client() as client:
            return client.get(path or self.instance_path)

    def status(self) -> dict[str, Any]:
        with self.proxy.client() as client:
            response = client.get("/status", headers={"Accept": "application/json"})
        assert response.status_code == 200, response.text
        entry: dict[str, Any] = response.json()["servers"][self.server_id]
        return entry

    def stored(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.token_file.read_text())
        return data


class AuthSetupFactory(Protocol):
    """The ``auth_setup`` fixture: ``AuthSetup.start`` with the test's ``start_proxy``,
    the example model and the sample study already bound."""

    def __call__(
        self,
        server: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
        extra_args: Iterable[str] = (),
    ) -> AuthSetup: ...


def assert_segmentation(response: httpx.Response, study: SampleStudy) -> None:
    """A 200 with the example model's masks for the requested instance."""
    assert response.status_code == 200, response.text
    result = response.json()
    assert study.study_uid in result, result


def expect_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"message", "code"}, body
    assert body["code"] == code, body
    message: str = body["message"]
    return message


def assert_no_secret(texts: Iterable[str], secrets: Iterable[str]) -> None:
    """None of ``secrets`` in any of ``texts`` (logs, response bodies, /status)."""
    blob = "\n".join(texts)
    for secret in secrets:
        assert secret, "an empty secret proves nothing"
        assert secret not in blob, f"a secret ({secret[:4]}…) leaked"


def use_up(token_server: TokenServer, auth_token: str) -> None:
    """Exchange a single-use auth token as someone else would, so the proxy cannot."""
    with http_client() as client:
        response = client.post(
            token_server.exchange_url, headers={"Authorization": f"Bearer {auth_token}"}
        )
    assert response.status_code == 200, response.text
