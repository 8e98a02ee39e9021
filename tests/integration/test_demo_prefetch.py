"""The done-when of prefetch (issue 12): in the demo, a new study dropped into the demo's
DICOM folder is segmented by itself, and the viewer's request for it is then a cache
hit. ``model-proxy demo`` runs as a user starts it (its own example model, its own
rules.json and watch interval); the test copies a study in and waits, with a deadline,
for the job the demo's rule makes."""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from harness import jobs_of_study, model_proxy_argv
from processes import (
    START_TIMEOUT,
    ManagedProcess,
    free_port,
    http_client,
    wait_ready,
    wait_until,
)

from model_proxy.cli.demo import SEGMENTATION_MODEL_ID
from model_proxy.sample_data import make_study, write_study

pytestmark = pytest.mark.integration

# A bound for a loaded machine, not the "within a minute" of a quiet one.
DEADLINE = 180.0


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[ManagedProcess, Path, str]]:
    """``model-proxy demo --dir`` on free ports: (process, its folder, its URL)."""
    folder = tmp_path / "demo-data"
    port = free_port()
    argv = [
        *model_proxy_argv(),
        "demo",
        "--dir", str(folder),
        "--port", str(port),
        "--model-port", str(free_port()),
    ]  # fmt: skip
    process = ManagedProcess("demo", argv, log_path=tmp_path / "demo.log", cwd=tmp_path)
    process.start()
    url = f"https://127.0.0.1:{port}"
    try:
        # The demo writes its certificate before it starts the proxy.
        wait_ready(process, lambda: answers(url, folder / "zhiva.crt"), START_TIMEOUT * 4)
        yield process, folder, url
    finally:
        process.stop()


def answers(url: str, cert: Path) -> bool:
    if not cert.is_file():
        return False
    with http_client(verify=ssl.create_default_context(cafile=str(cert)), timeout=2.0) as client:
        return client.get(f"{url}/health").status_code == 200


def test_a_study_dropped_into_the_demo_folder_is_segmented_by_itself(
    demo: tuple[ManagedProcess, Path, str], tmp_path: Path
) -> None:
    process, folder, url = demo
    new = make_study(series_slices=(24, 12), rows=64, columns=64, seed=77)
    # Written aside, then moved in as one folder: as a user drops a study in.
    write_study(new, tmp_path / "incoming")
    shutil.move(tmp_path / "incoming", folder / "dicom" / "dropped-study")
    main_series = new.series[0].series_uid
    verify = ssl.create_default_context(cafile=str(folder / "zhiva.crt"))
    with httpx.Client(base_url=url, verify=verify, timeout=60.0, trust_env=False) as client:
        (job,) = wait_until(
            "finished job for the dropped study",
            lambda: jobs_of_study(client, new.study_uid, finished=True),
            timeout=DEADLINE,
            every=0.5,
        )
        assert job["status"] == "succeeded", job
        # The demo's rule: CT series of 20 instances or more, so not the 12-slice one.
        assert job["series"] == main_series and job["model"] == SEGMENTATION_MODEL_ID

        path = (
            f"/segmentations/{SEGMENTATION_MODEL_ID}/studies/{new.study_uid}/series/{main_series}"
        )
        answer = client.get(path, headers={"Accept-Encoding": "identity"})
        assert answer.status_code == 200, answer.text
        assert new.study_uid in answer.json()
    lines = [line for line in process.log_text().splitlines() if f"path={path} " in line]
    assert lines and "cache=hit" in lines[-1] and "model_called=False" in lines[-1], lines
