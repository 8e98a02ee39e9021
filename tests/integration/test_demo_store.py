"""The done-when of issue 11 with the README's demo (``model-proxy demo``): a new user asks
for a series segmentation with the ``?store=true`` line the demo prints, finds a valid
SEG in the demo's local folder, and the series and the study still work from the folder
afterwards (the stored SEG is not sent to the model with the study)."""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import httpx
import pytest
from dicom_checks import assert_masks_equal, dciodvfy_errors
from harness import (
    LOOPBACK,
    START_TIMEOUT,
    ManagedProcess,
    free_port,
    http_client,
    model_proxy_argv,
    start_on_free_port,
)

pytestmark = pytest.mark.integration


@dataclass
class Demo:
    process: ManagedProcess
    folder: Path
    port: int

    def client(self) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.folder / "zhiva.crt"))
        return http_client(base_url=f"https://{LOOPBACK}:{self.port}", verify=context, timeout=120)

    def printed_path(self, fragment: str) -> str:
        """The path of the first ``curl`` line the demo printed whose URL holds ``fragment``."""
        for url in re.findall(r"curl [^\n]*?'(https://[^']+)'", self.process.log_text()):
            if fragment in url:
                path: str = url.split("/", 3)[3]
                return "/" + path
        raise AssertionError(f"the demo printed no curl line with {fragment!r}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    folder = tmp_path_factory.mktemp("demo-data")
    model_port = free_port()

    def make(port: int) -> ManagedProcess:
        argv = [
            *model_proxy_argv(), "demo", "--dir", str(folder), "--host", LOOPBACK,
            "--port", str(port), "--model-port", str(model_port),
        ]  # fmt: skip
        return ManagedProcess("demo", argv, log_path=folder / "demo.out", cwd=folder)

    def ready(port: int) -> bool:
        if not (folder / "zhiva.crt").is_file():
            return False
        context = ssl.create_default_context(cafile=str(folder / "zhiva.crt"))
        with http_client(verify=context, timeout=5.0) as client:
            status: int = client.get(f"https://{LOOPBACK}:{port}/health").status_code
            return status == 200

    # The demo writes its study and certificate before it listens: more than a server's start.
    started, port = start_on_free_port(make, ready, START_TIMEOUT * 3)
    try:
        yield Demo(started, folder, port)
    finally:
        started.stop()


def _instance_count(client: httpx.Client) -> int:
    """Instances in the demo's folder, as its /status probe counts them."""
    (server,) = (
        client.get("/status", headers={"Accept": "application/json"}).json()["servers"].values()
    )
    found = re.match(r"(\d+) instance", server["detail"])
    assert found is not None, server
    return int(found.group(1))


def _wait_until_indexed(client: httpx.Client, instances: int) -> None:
    # The probe is cached for --status-cache seconds (5) and the folder rescanned in
    # the background: poll, within a generous deadline for a loaded machine.
    deadline = time.monotonic() + 120
    while _instance_count(client) < instances:
        assert time.monotonic() < deadline, "the stored SEG never reached the folder's index"
        time.sleep(0.5)


def test_store_true_from_the_demo_puts_a_valid_seg_in_its_folder(demo: Demo) -> None:
    store_path = demo.printed_path("?store=true")
    series_path = store_path.removesuffix("?store=true")
    study_uid, series_uid = re.findall(r"/studies/([^/]+)/series/([^/?]+)", series_path)[0]
    with demo.client() as client:
        images = _instance_count(client)
        before = client.get(series_path)
        assert before.status_code == 200, before.text
        stored = client.get(store_path)
        assert stored.status_code == 200, stored.text
        assert stored.json() == before.json()
        sop_uid = stored.headers["dicom-stored"]

        (seg_file,) = (demo.folder / "dicom").glob(f"*/{sop_uid}.dcm")
        assert dciodvfy_errors(seg_file) == []
        seg = hd.seg.segread(seg_file)
        assert seg.StudyInstanceUID == study_uid
        assert_masks_equal(seg, before.json()[study_uid][series_uid])

        # From the folder afterwards: the series as before; the study, once the folder's
        # index holds the SEG (its /status probe counts it), without sending it to the model.
        assert client.get(series_path).json() == before.json()
        _wait_until_indexed(client, instances=images + 1)
        study_path = series_path.split("/series/")[0]
        study = client.get(study_path)
        assert study.status_code == 200, study.text
        assert study.json()[study_uid][series_uid] == before.json()[study_uid][series_uid]
        volumes = client.get(demo.printed_path("/predictions/").split("?")[0])
        assert volumes.status_code == 200, volumes.text
