"""An in-process proxy for the tests of tests/inprocess: ``create_app`` on servers.json /
models.json (and access.json) written to a temporary folder, its lifespan running, and an
``httpx.AsyncClient`` over ``httpx.ASGITransport`` to call it. ``Deployment`` holds the
upstreams (app_upstreams.py) and the standard config files:

    async def test_health(deployment: Deployment, tmp_path: Path) -> None:
        async with deployment.proxy(tmp_path) as proxy:
            assert (await proxy.client.get("/health")).status_code == 200
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from app_upstreams import PACS_PASSWORD, PACS_USER
from starlette.applications import Starlette

from model_proxy.access import AccessPolicy
from model_proxy.access.loader import load_access
from model_proxy.app import create_app
from model_proxy.config.loader import load_config
from model_proxy.sample_data import SampleStudy
from model_proxy.settings import Settings

ALL_LEVELS = ["/studies", "/studies/series", "/studies/series/instances"]


def new_uid() -> str:
    return str(uuid.uuid4())


@dataclass
class Proxy:
    """A running in-process proxy: its app, a client for it and its files."""

    app: Starlette
    client: httpx.AsyncClient
    config_dir: Path
    settings: Settings

    def audit_records(self) -> list[dict[str, Any]]:
        assert self.settings.audit_log is not None
        path = self.settings.audit_log
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines()]

    def write_config(self, servers: dict[str, Any], models: dict[str, Any]) -> None:
        write_json(self.config_dir / "servers.json", servers)
        write_json(self.config_dir / "models.json", models)

    async def reload(self) -> bool:
        """What SIGHUP does (runtime/reload.py), awaited: True if the files were taken."""
        result: bool = await self.app.state.reloader.reload("SIGHUP")
        return result


def write_json(path: Path, content: Any) -> None:
    path.write_text(json.dumps(content, indent=2))


@dataclass
class Deployment:
    """The upstreams (session-wide) and the standard servers.json / models.json."""

    study: SampleStudy
    folder: Path
    pacs_url: str
    model_url: str
    servers: dict[str, str] = field(default_factory=dict)  # name -> server id
    models: dict[str, str] = field(default_factory=dict)  # name -> model id

    def servers_json(self) -> dict[str, Any]:
        return {
            self.servers["folder"]: {"uri": self.folder.as_uri(), "isDefault": True},
            self.servers["pacs"]: {
                "uri": f"{self.pacs_url}/dicom-web",
                "authType": "basicAuth",
                "login": PACS_USER,
                "password": PACS_PASSWORD,
                "isDefault": False,
            },
        }

    def model(self, path: str, task: str, supports: list[str], **fields: Any) -> dict[str, Any]:
        entry = {"uri": f"{self.model_url}{path}", "task": task, "supports": supports}
        entry["statusUri"] = f"{self.model_url}/"
        return entry | fields

    def models_json(self) -> dict[str, Any]:
        return {
            self.models["seg"]: self.model("/segmentation", "segmentation", ALL_LEVELS),
            self.models["pred"]: self.model("/prediction", "prediction", ALL_LEVELS),
            self.models["ann"]: self.model("/annotation", "annotation", ALL_LEVELS),
            self.models["two-series"]: self.model(
                "/multiple-series-endpoint/predict",
                "prediction",
                ["/studies"],
                dataFilter=[
                    {"dataKey": "series-one", "title": "Series one"},
                    {"dataKey": "series-two", "title": "Series two"},
                ],
            ),
        }

    def path(self, model: str, level: str = "instance", family: str = "") -> str:
        """The route of ``model`` at ``level`` (study, series, instance) on the study."""
        family = family or {"seg": "segmentations", "ann": "annotations"}.get(model, "predictions")
        series = self.study.series[0]
        path = f"/{family}/{self.models.get(model, model)}/studies/{self.study.study_uid}"
        if level in ("series", "instance"):
            path += f"/series/{series.series_uid}"
        if level == "instance":
            path += f"/instances/{series.sop_uids[0]}"
        return path

    @asynccontextmanager
    async def proxy(
        self,
        tmp_path: Path,
        *,
        servers: dict[str, Any] | None = None,
        models: dict[str, Any] | None = None,
        access: dict[str, Any] | None = None,
        **settings: Any,
    ) -> AsyncIterator[Proxy]:
        """``create_app`` on these files in ``tmp_path``, its lifespan running."""
        config_dir = tmp_path / "config"
        config_dir.mkdir(exist_ok=True)
        write_json(config_dir / "servers.json", self.servers_json() if servers is None else servers)
        write_json(config_dir / "models.json", self.models_json() if models is None else models)
        config = load_config(config_dir)
        policy: AccessPolicy | None = None
        if access is not None:
            write_json(config_dir / "access.json", access)
            (config_dir / "access.json").chmod(0o600)
            policy = load_access(config_dir / "access.json", known_models=config.models)
        defaults = Settings(
            config_dir=config_dir,
            data_dir=tmp_path / "data",
            show_status_page=True,
            audit_log=tmp_path / "audit.jsonl",
        )
        chosen = replace(defaults, **settings)
        chosen.data_dir.mkdir(parents=True, exist_ok=True)
        app = create_app(chosen, config, policy)
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://proxy", timeout=60) as client,
        ):
            yield Proxy(app=app, client=client, config_dir=config_dir, settings=chosen)
