"""A proxy whose PACS and model sit behind fault-injecting relays (faults.py), beside a
healthy Orthanc and example model: each test plans its faults on the relays and checks
that the proxy answers as documented and keeps serving the healthy pair.

    with fault_bench(...) as bench:
        bench.pacs.plan(respond("500 Internal Server Error"))
        response = bench.get(bench.path("relay-pacs"))
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from faults import FaultyRelay, closed_port_url, faulty_relay, hanging_server
from harness import (
    ExampleModel,
    OrthancServer,
    ProxyProcess,
    TlsCert,
    new_uid,
    server_entry,
    start_proxy,
)

from model_proxy.sample_data import SampleStudy

ALL_LEVELS = ["/studies", "/studies/series", "/studies/series/instances"]
PACS_TIMEOUT = 1.0
MODEL_TIMEOUT = 2.0


@dataclass
class FaultBench:
    proxy: ProxyProcess
    study: SampleStudy
    pacs: FaultyRelay  # in front of Orthanc
    model: FaultyRelay  # in front of the example model
    servers: dict[str, str]
    models: dict[str, str]

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        with self.proxy.client() as client:
            return client.get(path, **kwargs)

    def path(self, server: str = "orthanc", model: str = "pred", *, series: bool = False) -> str:
        """A prediction of the sample study (or its first series) from ``server``."""
        path = f"/predictions/{self.models[model]}/studies/{self.study.study_uid}"
        if series:
            path += f"/series/{self.study.series[0].series_uid}"
        return f"{path}?server={self.servers[server]}"

    def healthy(self) -> dict[str, Any]:
        """A good request to the healthy Orthanc and model succeeds: the proxy serves on."""
        response = self.get(self.path())
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def status(self) -> dict[str, Any]:
        with self.proxy.client() as client:
            report: dict[str, Any] = client.get(
                "/status", headers={"Accept": "application/json"}
            ).json()
        return report


def instance_count(result: dict[str, Any], study_uid: str) -> int:
    """The example model's count of the instances it received for a study."""
    entries = {entry["title"]: entry["value"] for entry in result[study_uid]["metadata"]}
    count: int = entries["Instances"]
    return count


@contextmanager
def fault_bench(
    workdir: Path,
    orthanc: OrthancServer,
    example_model: ExampleModel,
    study: SampleStudy,
    tls_cert: TlsCert,
    *,
    extra_args: Sequence[str] = (),
) -> Iterator[FaultBench]:
    with ExitStack() as stack:
        pacs = stack.enter_context(faulty_relay(orthanc.url))
        model = stack.enter_context(faulty_relay(example_model.url))
        hanging = stack.enter_context(hanging_server())
        servers = {name: new_uid() for name in ("orthanc", "relay", "refused")}
        models = {name: new_uid() for name in ("pred", "relay", "refused", "retrying", "hanging")}
        # The /status probes go to the real servers, not through the relays, so that
        # they never take a fault planned for a request.
        servers_json = {
            servers["orthanc"]: server_entry(orthanc),
            servers["relay"]: server_entry(orthanc, uri=f"{pacs.url}/dicom-web", isDefault=False),
            servers["refused"]: {"uri": f"{closed_port_url()}/dicom-web"},
        }

        def entry(url: str, **fields: Any) -> dict[str, Any]:
            return {
                "uri": url,
                "task": "prediction",
                "supports": ALL_LEVELS,
                "statusUri": example_model.url,
                **fields,
            }

        refused_model = closed_port_url()
        models_json = {
            models["pred"]: entry(f"{example_model.url}/prediction"),
            models["relay"]: entry(f"{model.url}/prediction"),
            models["refused"]: entry(f"{refused_model}/prediction"),
            models["retrying"]: entry(f"{refused_model}/prediction", retries=2),
            models["hanging"]: entry(f"{hanging}/prediction"),
        }
        # No result cache: every request goes to the PACS and the model (and no
        # QIDO validation query takes a fault planned for a retrieval).
        timeouts = [
            "--pacs-timeout", str(PACS_TIMEOUT),
            "--model-timeout", str(MODEL_TIMEOUT),
            "--probe-timeout", "1",
            "--cache-size", "0",
        ]  # fmt: skip
        proxy = start_proxy(
            workdir,
            servers_json,
            models_json,
            cert=tls_cert,
            env={"ZHIVA_SHOW_STATUS_PAGE": "true"},
            extra_args=[*timeouts, *extra_args],
        )
        stack.callback(proxy.stop)
        yield FaultBench(proxy, study, pacs, model, servers, models)
