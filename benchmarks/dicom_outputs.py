"""Peak memory of the proxy making a DICOM Segmentation of a long series (issue 11).

    .venv/bin/python -m benchmarks.dicom_outputs [--slices 2000] [--size 512]

A synthetic CT series (``sample_data.make_study``: ``--slices`` slices of ``--size``
pixels square, written to a folder served as a ``file://`` PACS) goes through one
``model-proxy serve`` to benchmarks/seg_result_model.py, which answers a "Body" and a
"Lungs" mask per slice, streamed. Each case runs in a fresh proxy process (the result
cache off), whose peak RSS (VmHWM) is read once the answer is in:

- ``json``: the plain JSON answer, streamed to the viewer: the baseline;
- ``dicom``: ``Accept: application/dicom``, the SEG returned;
- ``store``: ``?store=true``, the SEG stored into the folder, the JSON answered.

Printed: time, peak RSS and its ratio to the baseline, and the sizes of the JSON
result and of the SEG. The figures are in docs/performance.md and
docs/dicom-outputs.md; no test asserts them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import LOOPBACK, ManagedProcess, http_client, new_uid, start_on_free_port, start_proxy
from processes import START_TIMEOUT

from benchmarks import ROOT
from benchmarks.run import peak_rss
from model_proxy.sample_data import make_study, write_study

SEED = 5
MiB = 1 << 20


def start_model(workdir: Path, slices: int, size: int) -> tuple[ManagedProcess, str]:
    def make(port: int) -> ManagedProcess:
        argv = [
            sys.executable, "-m", "benchmarks.seg_result_model", "--port", str(port),
            "--slices", str(slices), "--size", str(size), "--seed", str(SEED),
        ]  # fmt: skip
        return ManagedProcess("seg model", argv, log_path=workdir / "model.log", cwd=ROOT)

    def probe(port: int) -> bool:
        with http_client(timeout=2.0) as client:
            status: int = client.get(f"http://{LOOPBACK}:{port}/").status_code
            return status == 200

    process, port = start_on_free_port(make, probe, START_TIMEOUT)
    return process, f"http://{LOOPBACK}:{port}"


def run_case(
    workdir: Path, name: str, folder: Path, model_url: str, path: str, **request: Any
) -> tuple[float, int, int, dict[str, str]]:
    """(seconds, peak RSS, body bytes, headers) of one request in a fresh proxy."""
    server, model = new_uid(), new_uid()
    proxy = start_proxy(
        workdir / name,
        {server: {"uri": folder.as_uri(), "isDefault": True}},
        {model: {"uri": f"{model_url}/segmentation", "task": "segmentation",
                 "supports": ["/studies/series"], "name": "Benchmark segmenter"}},
        cert=None,
        extra_args=["--cache-size", "0", "--dicom-max-result", "64MiB"],
    )  # fmt: skip
    try:
        started = time.perf_counter()
        size = 0
        url = f"/segmentations/{model}{path}"
        with (
            proxy.client(timeout=3600.0) as client,
            client.stream("GET", url, **request) as response,
        ):
            for chunk in response.iter_bytes():
                size += len(chunk)
            if response.status_code != 200:
                raise RuntimeError(f"{name}: answered {response.status_code}")
            headers = dict(response.headers)
        seconds = time.perf_counter() - started
        assert proxy.process.pid is not None
        return seconds, peak_rss(proxy.process.pid), size, headers
    finally:
        proxy.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-dicom-outputs-"))
    model: ManagedProcess | None = None
    try:
        study = make_study(series_slices=(args.slices,), rows=args.size, columns=args.size,
                           seed=SEED)  # fmt: skip
        folder = workdir / "pacs"
        write_study(study, folder)
        model, model_url = start_model(workdir, args.slices, args.size)
        path = f"/studies/{study.study_uid}/series/{study.series[0].series_uid}"
        print(f"series: {args.slices} slices of {args.size}x{args.size}, two masks per slice")
        cases: dict[str, dict[str, Any]] = {
            "json": {},
            "dicom": {"headers": {"Accept": "application/dicom"}},
            "store": {"params": {"store": "true"}},
        }
        baseline = 0
        for name, request in cases.items():
            seconds, peak, size, headers = run_case(workdir, name, folder, model_url, path,
                                                    **request)  # fmt: skip
            baseline = baseline or peak
            what = {"json": "JSON result", "dicom": "SEG", "store": "JSON answer"}[name]
            stored = ""
            if "dicom-stored" in headers:
                (seg,) = folder.glob(f"*/{headers['dicom-stored']}.dcm")
                stored = f", SEG stored {seg.stat().st_size / MiB:,.1f} MiB"
            print(
                f"  {name:5}: {seconds:7.1f} s, proxy peak RSS {peak / MiB:7,.0f} MiB"
                f" ({peak / baseline:.2f}x the JSON answer's), {what} {size / MiB:,.1f} MiB"
                f"{stored}"
            )
    finally:
        if model is not None:
            model.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
