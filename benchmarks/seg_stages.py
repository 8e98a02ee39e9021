"""Where a streamed DICOM SEG spends its time, stage by stage, in one process.

    .venv/bin/python -m benchmarks.seg_stages [--slices 200] [--size 512] [--profile]

The result benchmarks/seg_result_model.py answers for a synthetic series (two
masks per slice) goes through the stages of ``dicom_results/seg_stream.py``
without a proxy, a PACS or a network: split into instances (json_split.py),
masks read and spooled (mask_text.py, seg_spool.py), source headers parsed
(headers.py), the SEG written (seg_writer.py, frame_items.py). Printed: the
seconds of each stage and its share of the whole; with ``--profile`` also the
functions that take the most time (cProfile). The stage times of the change that
made the SEG fast are in docs/performance.md; no test asserts them.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks.seg_result_model import result_chunks
from model_proxy.dicom_results.headers import _GEOMETRY, _header
from model_proxy.dicom_results.json_split import InstanceSplitter
from model_proxy.dicom_results.seg import Algorithm
from model_proxy.dicom_results.seg_spool import MaskSpool
from model_proxy.dicom_results.seg_writer import write_segmentation
from model_proxy.sample_data import make_study

SEED = 5  # the seed of benchmarks/dicom_outputs.py: the same series
CHUNK = 1 << 16  # the result fed in pieces of this size, as it arrives from a socket


def run_stages(text: bytes, instances: list[bytes], folder: Path) -> dict[str, float]:
    """Seconds per stage of one conversion of ``text`` (the model's result)."""
    seconds = dict.fromkeys(("split", "masks", "headers", "write"), 0.0)
    splitter = InstanceSplitter(max_value_bytes=64 << 20)
    spool = MaskSpool(folder / "masks.spool", "benchmark")
    try:
        for start in range(0, len(text), CHUNK):
            began = time.perf_counter()
            members = splitter.feed(text[start : start + CHUNK])
            split = time.perf_counter()
            for study, series, key, value in members:
                spool.add_instance(study, series, key, value)
            seconds["split"] += split - began
            seconds["masks"] += time.perf_counter() - split
        splitter.close()
        began = time.perf_counter()
        headers = {}
        tags: tuple[str, ...] | None = None  # as source_headers(geometry_only=True)
        for data in instances:
            header = _header(data, "benchmark", tags)
            tags = _GEOMETRY
            headers[str(header.SOPInstanceUID)] = header
        seconds["headers"] = time.perf_counter() - began
        began = time.perf_counter()
        (masks,) = spool.series.values()
        algorithm = Algorithm("benchmark", "Benchmark segmenter", "1")
        write_segmentation(masks, spool, headers, algorithm, "2.25.", folder / "seg.dcm")
        seconds["write"] = time.perf_counter() - began
    finally:
        spool.close()
    return seconds


def _series(slices: int, size: int) -> tuple[bytes, list[bytes]]:
    """The model's result for a synthetic series, and the series' instances."""
    study = make_study(series_slices=(slices,), rows=size, columns=size, seed=SEED)
    instances = [data for _, _, data in study.iter_instances()]
    return b"".join(result_chunks(slices, size, SEED)), instances


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--profile", action="store_true", help="also print cProfile's top 25")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-seg-stages-"))
    try:
        # Warmed up on two slices first: highdicom reads its tables of the standard once.
        run_stages(*_series(2, args.size), folder)
        text, instances = _series(args.slices, args.size)
        profile = cProfile.Profile() if args.profile else None
        if profile is not None:
            profile.enable()
        seconds = run_stages(text, instances, folder)
        if profile is not None:
            profile.disable()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    total = sum(seconds.values())
    print(
        f"{args.slices} slices of {args.size}x{args.size}, {len(text) / (1 << 20):,.0f} MiB of JSON"
    )
    for stage, value in seconds.items():
        print(f"  {stage:8}: {value:7.2f} s ({value / total:4.0%})")
    print(f"  {'total':8}: {total:7.2f} s, {total / args.slices * 1000:.1f} ms per slice")
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
