"""A proxy with client authentication on: API keys, bearer JWTs from a real JWKS
endpoint, per-model and per-server rules, a CORS allow-list and the status page. Used through the
``guarded`` fixture (conftest.py) of the access and audit tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from faults import closed_port_url
from harness import (
    ExampleModel,
    OrthancServer,
    ProxyProcess,
    TlsCert,
    model_entry,
    new_uid,
    server_entry,
    start_proxy,
)
from identity import AUDIENCE, IdentityProvider, SigningKey, ec_key, identity_provider, rsa_key

from model_proxy.access import digest_of, new_api_key
from model_proxy.sample_data import SampleStudy

ALL_LEVELS = ["/studies", "/studies/series", "/studies/series/instances"]
VIEWER_ORIGIN = "https://viewer.hospital.test"
# A PACS password that would be easy to spot in a log, a body or /status.
PACS_PASSWORD = "Pacs-Secret-7f3a91"


@dataclass
class Guarded:
    proxy: ProxyProcess
    idp: IdentityProvider
    rsa: SigningKey
    ec: SigningKey
    study: SampleStudy
    keys: dict[str, str]  # key name -> the key itself
    models: dict[str, str]
    servers: dict[str, str]

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        with self.proxy.client() as client:
            return client.get(path, **kwargs)

    def instance_path(self, model: str, family: str = "segmentations") -> str:
        series = self.study.series[0]
        return (
            f"/{family}/{self.models[model]}/studies/{self.study.study_uid}"
            f"/series/{series.series_uid}/instances/{series.sop_uids[0]}"
        )

    def with_key(self, name: str) -> dict[str, str]:
        return {"X-API-Key": self.keys[name]}

    def with_token(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def audit_records(self) -> list[dict[str, Any]]:
        path = self.proxy.log_dir / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


def access_json(
    idp: IdentityProvider,
    keys: dict[str, str],
    models: dict[str, str],
    servers: dict[str, str],
    **jwt: Any,
) -> dict[str, Any]:
    return {
        "apiKeys": {
            "viewer": {"sha256": digest_of(keys["viewer"]).hex(), "roles": ["radiologist"]},
            "batch": {"sha256": digest_of(keys["batch"]).hex()},
        },
        "jwt": {
            "jwksUri": idp.jwks_url,
            "issuer": idp.issuer,
            "audience": AUDIENCE,
            "algorithms": ["RS256", "ES256"],
            "rolesClaim": "realm_access.roles",
            "jwksRefetchSeconds": 0,
        }
        | jwt,
        "models": {
            models["seg"]: {"roles": ["radiologist"]},
            models["two-series"]: {"roles": ["radiologist"]},
            models["pred"]: {"keys": ["batch"], "subjects": ["alice"]},
        },
        "unlistedModels": "deny",
        # The "restricted" PACS (the same Orthanc) for the batch key and alice only.
        "servers": {servers["restricted"]: {"keys": ["batch"], "subjects": ["alice"]}},
    }


@contextmanager
def deploy_guarded(
    tmp_path_factory: pytest.TempPathFactory,
    orthanc_basic_auth: OrthancServer,
    example_model: ExampleModel,
    study: SampleStudy,
    cert: TlsCert,
) -> Iterator[Guarded]:
    with identity_provider() as idp:
        rsa, ec = rsa_key("rsa-1"), ec_key("ec-1")
        idp.publish(rsa, ec)
        keys = {"viewer": new_api_key(), "batch": new_api_key()}
        models = {name: new_uid() for name in ("seg", "pred", "two-series", "ann")}
        servers = {
            "basic": new_uid(),
            "wrong-password": new_uid(),
            "down": new_uid(),
            "restricted": new_uid(),
        }
        servers_json = {
            servers["basic"]: server_entry(orthanc_basic_auth),
            servers["wrong-password"]: server_entry(
                orthanc_basic_auth, isDefault=False, password=PACS_PASSWORD
            ),
            servers["restricted"]: server_entry(orthanc_basic_auth, isDefault=False),
            servers["down"]: {
                "uri": f"{closed_port_url()}/dicom-web",
                "authType": "basicAuth",
                "login": "proxy",
                "password": PACS_PASSWORD,
                "statusUri": f"{closed_port_url()}/dicom-web/studies",
            },
        }
        models_json = {
            models["seg"]: model_entry(example_model, "/segmentation", "segmentation", ALL_LEVELS),
            models["pred"]: model_entry(example_model, "/prediction", "prediction", ALL_LEVELS),
            models["ann"]: model_entry(example_model, "/annotation", "annotation", ALL_LEVELS),
            models["two-series"]: model_entry(
                example_model,
                "/multiple-series-endpoint/predict",
                "prediction",
                ["/studies"],
                dataFilter=[
                    {"dataKey": "series-one", "title": "Series one"},
                    {"dataKey": "series-two", "title": "Series two"},
                ],
            ),
        }
        config_dir = tmp_path_factory.mktemp("guarded")
        (config_dir / "access.json").write_text(json.dumps(access_json(idp, keys, models, servers)))
        (config_dir / "access.json").chmod(0o644)  # start-up must warn about it
        proxy = start_proxy(
            config_dir,
            servers_json,
            models_json,
            cert=cert,
            env={"ZHIVA_SHOW_STATUS_PAGE": "true"},
            extra_args=["--cors-origins", VIEWER_ORIGIN],
        )
        try:
            yield Guarded(proxy, idp, rsa, ec, study, keys, models, servers)
        finally:
            proxy.stop()
