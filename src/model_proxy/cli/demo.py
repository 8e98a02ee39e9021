"""``model-proxy demo``: the embedded default, from nothing to a result.

Generates a synthetic CT study in a local folder, writes servers.json and
models.json for it and for the bundled example model, and a rules.json that
segments every new CT series dropped into the folder by itself (prefetch,
docs/jobs.md), makes a certificate, starts the example model and serves the
proxy over HTTPS, printing ``curl`` lines that return real results.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from model_proxy.cli.certificates import CERT_NAME, KEY_NAME, generate_self_signed
from model_proxy.sample_data import make_study, write_study
from model_proxy.settings import Settings

SERVER_ID = "5b9d2c1e-7a4f-4d0b-9c1e-2f3a4b5c6d7e"
MODELS = {
    # The contract's own example ids, so its documentation reads the same here.
    "d4e548ad-f365-4c34-918b-4e61a8b896f0": ("segmentation", "/segmentation"),
    "0b7c4f2e-8d1a-4e6b-a3c5-9f8e7d6c5b4a": ("annotation", "/annotation"),
    "3e2d1c0b-9a8f-4e7d-b6c5-a4b3c2d1e0f9": ("prediction", "/prediction"),
}
TWO_SERIES_MODEL_ID = "7472e576-d49c-4fbf-9b2a-a52e1f59a906"
SEGMENTATION_MODEL_ID = "d4e548ad-f365-4c34-918b-4e61a8b896f0"
# Seconds between looks at the folder for new studies: a study copied in is found
# stable within two of them, so it is segmented well within a minute.
DEMO_WATCH_INTERVAL = 5.0
DEMO_RULES = {
    "rules": [
        {
            "name": "demo: segment new CT series",
            "model": SEGMENTATION_MODEL_ID,
            "server": SERVER_ID,
            "level": "series",
            "match": {"Modality": "CT", "minInstances": 20},
        }
    ]
}
ALL_LEVELS = ["/studies", "/studies/series", "/studies/series/instances"]


def write_demo_config(folder: Path, dicom_dir: Path, model_url: str) -> None:
    servers = {
        SERVER_ID: {
            "uri": dicom_dir.resolve().as_uri(),
            "isDefault": True,
        }
    }
    models: dict[str, object] = {
        model_id: {
            "uri": f"{model_url}{path}",
            "task": task,
            "supports": ALL_LEVELS,
            "statusUri": f"{model_url}/",
        }
        for model_id, (task, path) in MODELS.items()
    }
    models[TWO_SERIES_MODEL_ID] = {
        "uri": f"{model_url}/multiple-series-endpoint/predict",
        "task": "prediction",
        "supports": ["/studies"],
        "statusUri": f"{model_url}/",
        "dataFilter": [
            {"dataKey": "series-one", "title": "Series one"},
            {"dataKey": "series-two", "title": "Series two"},
        ],
    }
    option = orjson.OPT_INDENT_2
    (folder / "servers.json").write_bytes(orjson.dumps(servers, option=option) + b"\n")
    (folder / "models.json").write_bytes(orjson.dumps(models, option=option) + b"\n")
    (folder / "rules.json").write_bytes(orjson.dumps(DEMO_RULES, option=option) + b"\n")


def run_demo(folder: Path, *, host: str, port: int, model_port: int) -> int:
    from model_proxy.cli.logs import setup_logging
    from model_proxy.cli.options import load_checked_config
    from model_proxy.cli.serve import run_server

    folder.mkdir(parents=True, exist_ok=True)
    dicom_dir = folder / "dicom"
    study = make_study(series_slices=(48, 24), rows=256, columns=256)
    if not dicom_dir.is_dir():
        print(f"writing a synthetic CT study to {dicom_dir} ...")
        write_study(study, dicom_dir)
    if not (folder / CERT_NAME).is_file() or not (folder / KEY_NAME).is_file():
        generate_self_signed(folder)
    model_url = f"http://127.0.0.1:{model_port}"
    write_demo_config(folder, dicom_dir, model_url)

    model_process = subprocess.Popen(
        [sys.executable, "-m", "model_proxy.cli", "example-model", "--port", str(model_port)]
    )
    try:
        _wait_for(f"{model_url}/health", model_process)
        setup_logging(folder / "log")
        settings = Settings(
            config_dir=folder,
            data_dir=folder / "data",
            log_dir=folder / "log",
            show_status_page=True,
            watch_interval=DEMO_WATCH_INTERVAL,
        )
        _print_curl_lines(
            folder,
            host,
            port,
            study.study_uid,
            [s.series_uid for s in study.series],
            study.series[0].sop_uids[len(study.series[0].sop_uids) // 2],
        )
        run_server(
            settings,
            load_checked_config(folder),
            host=host,
            port=port,
            tls_files=(folder / CERT_NAME, folder / KEY_NAME),
        )
    finally:
        model_process.terminate()
        model_process.wait(timeout=10)
    return 0


def _wait_for(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    from model_proxy.cli.options import CommandError

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CommandError("the example model exited; is its port already taken?")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise CommandError(f"the example model did not answer at {url}")


def _print_curl_lines(
    folder: Path, host: str, port: int, study_uid: str, series_uids: list[str], sop_uid: str
) -> None:
    shown_host = "localhost" if host in {"127.0.0.1", "0.0.0.0", "localhost"} else host
    base = f"https://{shown_host}:{port}"
    cert = folder / CERT_NAME
    seg, ann, pred = MODELS
    series = f"studies/{study_uid}/series/{series_uids[0]}"
    two = (
        "data-filters%5B0%5D%5BdataKey%5D=series-one&data-filters%5B0%5D%5Buuid%5D="
        f"{series_uids[0]}&data-filters%5B1%5D%5BdataKey%5D=series-two"
        f"&data-filters%5B1%5D%5Buuid%5D={series_uids[1]}"
    )
    lines = [
        ("segment a series (body and lung masks)", f"{base}/segmentations/{seg}/{series}"),
        (
            f"the same, also stored as a DICOM SEG in {folder / 'dicom'} (docs/dicom-outputs.md)",
            f"{base}/segmentations/{seg}/{series}?store=true",
        ),
        ("outline the body on one slice", f"{base}/annotations/{ann}/{series}/instances/{sop_uid}"),
        ("volumes for the whole study", f"{base}/predictions/{pred}/studies/{study_uid}"),
        (
            "compare two series (data filters)",
            f"{base}/predictions/{TWO_SERIES_MODEL_ID}/studies/{study_uid}?{two}",
        ),
        ("status of the PACS and the models", f"{base}/status"),
    ]
    print("\nmodel-proxy demo is starting. Try, from another terminal:\n")
    for title, url in lines:
        print(f"  # {title}\n  curl --cacert {cert} '{url}'\n")
    # The same segmentation as a background job (docs/jobs.md).
    print(
        "  # the same segmentation as a background job: 202 and Location: /jobs/<id>\n"
        f"  curl -i --cacert {cert} -H 'Prefer: respond-async'"
        f" '{base}/segmentations/{seg}/{series}'\n"
        f"  # recent jobs with progress bars: open {base}/jobs in a browser\n"
    )
    print(
        f"  # a new CT study copied into {folder / 'dicom'} is segmented by itself within a"
        " minute\n  # (rules.json; the watcher looks every"
        f" {DEMO_WATCH_INTERVAL:g} s): it shows on {base}/jobs, and its GET is then a cache hit\n"
    )
