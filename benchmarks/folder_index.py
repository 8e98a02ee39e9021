"""A 50,000-file ``file://`` folder: cache-hit and 404 latency of the incremental index
against the old behaviour (a full rescan on every request), in the same run.

    .venv/bin/python -m benchmarks.folder_index [--files 50000] [--per-folder 100]

Writes ``--files`` small DICOM files (8x8 pixels) in series folders of ``--per-folder``
files under a temporary folder, indexes it once, then times, per request:

- *cache hit*: ``LocalFolderSource.fingerprint`` of a series, which is what a request
  answered from the result cache costs on the source side (cache/keys.py);
- *404*: a retrieval of a study that is not in the folder;
- *old*: the same two with the index refreshed first by walking and stat-ing every
  file, as ``FolderIndex.scan`` did before (unchanged files were not parsed again, but
  every request walked the whole tree).

The new index rescans in the background once a second while the requests run, as
``serve`` does by default. Prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from benchmarks.run import log, machine
from model_proxy.config import parse_servers
from model_proxy.errors import NotFound
from model_proxy.pacs.local_folder import LocalFolderSource
from model_proxy.pacs.source import Target

ROOT_UID = "1.2.826.0.1.3680043.9.7777"
SERVER_ID = "b1407f18-575d-487c-bc0c-640c6da651bc"


def uids(study: int, series: int, instance: int) -> tuple[str, str, str]:
    # Fixed-width parts without leading zeros: every file has the template's length.
    study_uid = f"{ROOT_UID}.1.{10000 + study}"
    series_uid = f"{ROOT_UID}.2.{10000 + study}.{10000 + series}"
    return study_uid, series_uid, f"{ROOT_UID}.3.{10000 + series}.{100000 + instance}"


def template() -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
    meta.MediaStorageSOPInstanceUID = UID(uids(0, 0, 0)[2])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID = uids(0, 0, 0)
    dataset.Modality = "CT"
    dataset.Rows = dataset.Columns = 8
    dataset.BitsAllocated = dataset.BitsStored = 16
    dataset.HighBit = 15
    dataset.PixelRepresentation = 0
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.PixelData = np.zeros((8, 8), dtype=np.uint16).tobytes()
    path = Path(tempfile.mkstemp(suffix=".dcm")[1])
    dataset.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    path.unlink()
    return data


def write_folder(root: Path, files: int, per_folder: int) -> list[Target]:
    """``files`` instances, ``per_folder`` to a series folder, ten series to a study;
    the series targets."""
    data = template()
    placeholders = [uid.encode() for uid in uids(0, 0, 0)]
    series_targets = []
    for number in range(files):
        series, instance = divmod(number, per_folder)
        study = series // 10
        values = uids(study, series, instance)
        content = data
        for placeholder, value in zip(placeholders, values, strict=True):
            content = content.replace(placeholder, value.encode())
        folder = root / f"study-{study}" / f"series-{series}"
        if instance == 0:
            folder.mkdir(parents=True)
            series_targets.append(Target(values[0], values[1]))
        (folder / f"{instance}.dcm").write_bytes(content)
    return series_targets


def old_full_walk(root: Path) -> int:
    """What every request cost before: walk the tree and stat every file."""
    count = 0
    for directory, _dirs, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            try:
                stat = path.stat()
            except OSError:
                continue
            count += stat.st_size > 0
    return count


async def median_ms(action: Callable[[], Awaitable[object]], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def measure(root: Path, targets: list[Target], runs: int, old_runs: int) -> None:
    servers, _ = parse_servers({SERVER_ID: {"uri": root.as_uri()}})
    source = LocalFolderSource(servers[SERVER_ID], min_rescan_interval=1.0)
    started = time.perf_counter()
    assert await source.fingerprint(targets[0]) is not None
    log(f"first index: {time.perf_counter() - started:.1f} s (parses every file, once)")
    missing = Target(f"{ROOT_UID}.9.1")

    async def hit(index: list[int] = [0]) -> None:  # noqa: B006  (a counter)
        index[0] += 1
        assert await source.fingerprint(targets[index[0] % len(targets)]) is not None

    async def not_found() -> None:
        try:
            async with source.retrieve(missing):
                raise AssertionError("found a study that is not there")
        except NotFound:
            pass

    async def old_hit() -> None:
        await asyncio.to_thread(old_full_walk, root)
        await hit()

    async def old_not_found() -> None:
        await asyncio.to_thread(old_full_walk, root)
        await not_found()

    figures = {
        "cache hit": (await median_ms(hit, runs), await median_ms(old_hit, old_runs)),
        "404": (await median_ms(not_found, runs), await median_ms(old_not_found, old_runs)),
    }
    print()
    print(f"{len(targets)} series, {machine()}")
    print()
    print("| request | p50 incremental index | p50 full rescan (old) | old / new |")
    print("| --- | --- | --- | --- |")
    for name, (new, old) in figures.items():
        print(f"| {name} | {new:.2f} ms | {old:.0f} ms | {old / new:.0f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--per-folder", type=int, default=100)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--old-runs", type=int, default=7)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="model-proxy-bench-folder-"))
    try:
        log(f"writing {args.files} DICOM files in folders of {args.per_folder}")
        targets = write_folder(root / "dicom", args.files, args.per_folder)
        asyncio.run(measure(root / "dicom", targets, args.runs, args.old_runs))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
