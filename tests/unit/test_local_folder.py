"""A folder of DICOM files served by UID, as a PACS would serve them."""

from __future__ import annotations

import asyncio
import io
import os
import re
import time
from pathlib import Path

import pydicom
import pytest

from model_proxy.config import ServerConfig, parse_servers
from model_proxy.errors import NotFound, PacsError
from model_proxy.pacs import folder_index
from model_proxy.pacs.local_folder import FolderIndex, LocalFolderSource
from model_proxy.pacs.source import Target
from model_proxy.sample_data import SampleStudy, make_study, write_study

SERVER_ID = "b1407f18-575d-487c-bc0c-640c6da651bc"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def study() -> SampleStudy:
    return make_study(series_slices=(3, 2), rows=16, columns=16, seed=11)


@pytest.fixture(scope="module")
def other_study() -> SampleStudy:
    return make_study(series_slices=(2,), rows=16, columns=16, seed=12)


@pytest.fixture
def folder(tmp_path: Path, study: SampleStudy) -> Path:
    root = tmp_path / "dicom"
    write_study(study, root / "nested" / "deeper")
    (root / "README.txt").write_text("not DICOM at all\n")
    (root / "empty.dcm").write_bytes(b"")
    # A file cut short while being copied in is skipped too (until it is complete).
    _series, _sop, data = next(
        make_study(series_slices=(1,), rows=16, columns=16, seed=99).iter_instances()
    )
    (root / "partial.dcm").write_bytes(data[:400])
    return root


def server_for(folder: Path) -> ServerConfig:
    servers, _warnings = parse_servers({SERVER_ID: {"uri": folder.as_uri()}})
    return servers[SERVER_ID]


def source_for(folder: Path, min_rescan_interval: float = 0.0) -> LocalFolderSource:
    return LocalFolderSource(server_for(folder), min_rescan_interval=min_rescan_interval)


def files_of(study: SampleStudy) -> dict[str, bytes]:
    return {sop: data for _series, sop, data in study.iter_instances()}


async def fetch(source: LocalFolderSource, target: Target) -> list[bytes]:
    async with source.retrieve(target) as instances:
        return [data async for data in instances]


def sop_uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


# --- FolderIndex ---------------------------------------------------------------------


def test_index_skips_non_dicom_and_empty_files(folder: Path, study: SampleStudy) -> None:
    index = FolderIndex(folder)
    index.scan()
    assert index.instance_count == 5
    assert set(index.studies) == {study.study_uid}
    series = index.studies[study.study_uid]
    assert {uid: set(paths) for uid, paths in series.items()} == {
        s.series_uid: set(s.sop_uids) for s in study.series
    }
    paths = {path.name for path in index.lookup(Target(study.study_uid))}
    assert paths == {f"{sop}.dcm" for s in study.series for sop in s.sop_uids}


def test_index_lookup_by_level(folder: Path, study: SampleStudy) -> None:
    index = FolderIndex(folder)
    index.scan()
    first = study.series[0]
    assert len(index.lookup(Target(study.study_uid))) == 5
    assert len(index.lookup(Target(study.study_uid, first.series_uid))) == 3
    [path] = index.lookup(Target(study.study_uid, first.series_uid, first.sop_uids[1]))
    assert path.name == f"{first.sop_uids[1]}.dcm"
    assert index.lookup(Target("1.2.3")) == []
    assert index.lookup(Target(study.study_uid, "1.2.3")) == []
    assert index.lookup(Target(study.study_uid, first.series_uid, "1.2.3")) == []
    # An instance is found only under its own series.
    other = study.series[1].series_uid
    assert index.lookup(Target(study.study_uid, other, first.sop_uids[0])) == []


def test_rescan_parses_only_changed_files(
    folder: Path, study: SampleStudy, other_study: SampleStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[str] = []
    read_uids = folder_index._read_uids

    def counting(path: Path) -> object:
        parsed.append(path.name)
        return read_uids(path)

    monkeypatch.setattr(folder_index, "_read_uids", counting)
    index = FolderIndex(folder)
    index.scan()
    assert len(parsed) == 8  # 5 instances, the text file, the empty and the partial file
    parsed.clear()
    index.scan()
    assert parsed == []
    # The text file becomes a DICOM file (new size): only it is parsed again.
    _series, _sop, data = next(other_study.iter_instances())
    (folder / "README.txt").write_bytes(data)
    index.scan()
    assert parsed == ["README.txt"]
    assert index.instance_count == 6
    assert [p.name for p in index.lookup(Target(other_study.study_uid))] == ["README.txt"]
    # A removed file leaves the index.
    removed = (
        folder
        / "nested"
        / "deeper"
        / study.series[1].series_uid
        / f"{study.series[1].sop_uids[0]}.dcm"
    )
    removed.unlink()
    index.scan()
    assert index.instance_count == 5
    assert removed not in index.lookup(Target(study.study_uid))


def test_dicom_file_without_series_uid_is_skipped(tmp_path: Path, study: SampleStudy) -> None:
    _series, _sop, data = next(study.iter_instances())
    dataset = pydicom.dcmread(io.BytesIO(data))
    del dataset.SeriesInstanceUID
    dataset.save_as(tmp_path / "no-series.dcm", enforce_file_format=True)
    index = FolderIndex(tmp_path)
    index.scan()
    assert index.studies == {}


# pydicom warns (instead of raising) on this content: a DICM preamble followed by
# an element of undefined length that never ends.
CORRUPT = b"\0" * 128 + b"DICM" + b"\xff" * 20


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")
def test_corrupt_file_is_skipped(folder: Path) -> None:
    (folder / "corrupt.dcm").write_bytes(CORRUPT)
    index = FolderIndex(folder)
    index.scan()
    assert index.instance_count == 5


def test_corrupt_file_is_skipped_without_a_warning_escaping(folder: Path) -> None:
    (folder / "corrupt.dcm").write_bytes(CORRUPT)
    index = FolderIndex(folder)
    index.scan()
    assert index.instance_count == 5


# --- LocalFolderSource ---------------------------------------------------------------


@pytest.mark.anyio
async def test_retrieve_study_series_and_instance_give_the_file_bytes(
    folder: Path, study: SampleStudy
) -> None:
    source = source_for(folder)
    files = files_of(study)
    got = await fetch(source, Target(study.study_uid))
    assert sorted(got) == sorted(files.values())

    for series in study.series:
        got = await fetch(source, Target(study.study_uid, series.series_uid))
        assert {sop_uid(data): data for data in got} == {sop: files[sop] for sop in series.sop_uids}

    series = study.series[0]
    for sop in series.sop_uids:
        got = await fetch(source, Target(study.study_uid, series.series_uid, sop))
        assert got == [files[sop]]
    # The bytes on disk, untouched.
    path = folder / "nested" / "deeper" / series.series_uid / f"{series.sop_uids[2]}.dcm"
    assert files[series.sop_uids[2]] == path.read_bytes()


@pytest.mark.anyio
async def test_unknown_uids_are_not_found(folder: Path, study: SampleStudy) -> None:
    source = source_for(folder)
    series = study.series[0]
    for target in (
        Target("1.2.3"),
        Target(study.study_uid, "1.2.3"),
        Target(study.study_uid, series.series_uid, "1.2.3"),
    ):
        with pytest.raises(NotFound) as info:
            await fetch(source, target)
        assert info.value.code == "not_on_pacs"
        assert target.describe() in info.value.message
        assert "local folder b1407f18" in info.value.message


async def eventually_found(source: LocalFolderSource, target: Target) -> list[bytes]:
    """Fetches ``target`` until a background rescan has indexed it."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return await fetch(source, target)
        except NotFound:
            assert time.monotonic() < deadline, f"{target} never found"
            await asyncio.sleep(0.01)


async def eventually_gone(source: LocalFolderSource, target: Target) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            await fetch(source, target)
        except NotFound:
            return  # out of the index (a PacsError: indexed, but the file is gone)
        except PacsError:
            pass
        assert time.monotonic() < deadline, f"{target} still indexed"
        await asyncio.sleep(0.01)


@pytest.mark.anyio
async def test_a_file_added_after_the_first_scan_is_found(
    folder: Path, study: SampleStudy, other_study: SampleStudy
) -> None:
    source = source_for(folder, min_rescan_interval=0)
    assert len(await fetch(source, Target(study.study_uid))) == 5
    write_study(other_study, folder / "later")
    # The request that misses answers at once; the rescan it started finds the files.
    got = await eventually_found(source, Target(other_study.study_uid))
    assert sorted(got) == sorted(files_of(other_study).values())


@pytest.mark.anyio
async def test_new_and_removed_files_in_a_known_series_are_noticed(
    folder: Path, study: SampleStudy
) -> None:
    source = source_for(folder, min_rescan_interval=0)
    series = study.series[1]
    series_target = Target(study.study_uid, series.series_uid)
    before = await source.fingerprint(series_target)
    assert len(await fetch(source, series_target)) == 2
    # A slice copied into the series folder under a new name, with a new SOP UID.
    series_dir = folder / "nested" / "deeper" / series.series_uid
    dataset = pydicom.dcmread(series_dir / f"{series.sop_uids[0]}.dcm")
    dataset.SOPInstanceUID = "1.2.3.4.5.6.7.8.9"
    dataset.save_as(series_dir / "extra.dcm", enforce_file_format=True)
    added = Target(study.study_uid, series.series_uid, "1.2.3.4.5.6.7.8.9")
    assert len(await eventually_found(source, added)) == 1
    assert len(await fetch(source, series_target)) == 3
    assert await source.fingerprint(series_target) != before
    # ... and removed again.
    (series_dir / "extra.dcm").unlink()
    await eventually_gone(source, added)
    assert len(await fetch(source, series_target)) == 2
    assert await source.fingerprint(series_target) == before


@pytest.mark.anyio
async def test_cache_hits_and_misses_do_not_wait_for_a_scan(
    folder: Path, study: SampleStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = source_for(folder, min_rescan_interval=3600)
    target = Target(study.study_uid)
    assert await source.fingerprint(target) is not None  # the first index
    scans: list[Path] = []
    monkeypatch.setattr(FolderIndex, "scan", lambda index: scans.append(index.root))
    for _ in range(3):
        assert await source.fingerprint(target) is not None
        with pytest.raises(NotFound):
            await fetch(source, Target("1.2.3"))
    assert scans == []


def test_unchanged_folders_are_not_listed_again(
    folder: Path, study: SampleStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[str] = []
    read_uids = folder_index._read_uids

    def counting(path: Path) -> object:
        parsed.append(path.name)
        return read_uids(path)

    monkeypatch.setattr(folder_index, "_read_uids", counting)
    # Folders last changed an hour ago: past the "racy" window of the clock's tick.
    hour_ago = time.time() - 3600
    folders = [folder, *(path for path in folder.rglob("*") if path.is_dir())]
    for path in folders:
        os.utime(path, (hour_ago, hour_ago))
    index = FolderIndex(folder)
    index.scan()
    assert index.listings == len(folders)
    parsed.clear()
    index.scan()
    assert index.listings == len(folders)  # each folder stat'ed, none listed again
    assert parsed == [] and index.instance_count == 5
    # A file added to one series folder: that folder alone is listed again.
    series_dir = folder / "nested" / "deeper" / study.series[0].series_uid
    (series_dir / "notes.txt").write_text("not DICOM")
    index.scan()
    assert index.listings == len(folders) + 1
    assert parsed == ["notes.txt"]


@pytest.mark.anyio
async def test_rescans_are_rate_limited(
    folder: Path, study: SampleStudy, other_study: SampleStudy
) -> None:
    source = source_for(folder, min_rescan_interval=3600)
    assert len(await fetch(source, Target(study.study_uid))) == 5
    write_study(other_study, folder / "later")
    with pytest.raises(NotFound):
        await fetch(source, Target(other_study.study_uid))


@pytest.mark.anyio
async def test_a_file_removed_after_the_scan_is_an_error_not_a_crash(
    folder: Path, study: SampleStudy
) -> None:
    source = source_for(folder, min_rescan_interval=3600)
    series = study.series[1]
    target = Target(study.study_uid, series.series_uid, series.sop_uids[0])
    assert len(await fetch(source, target)) == 1
    (folder / "nested" / "deeper" / series.series_uid / f"{series.sop_uids[0]}.dcm").unlink()
    with pytest.raises((PacsError, NotFound)):
        await fetch(source, target)


@pytest.mark.anyio
async def test_missing_folder_is_a_pacs_error(tmp_path: Path) -> None:
    folder = tmp_path / "gone"
    folder.mkdir()
    server = server_for(folder)  # the config check needs the folder to exist
    folder.rmdir()
    source = LocalFolderSource(server, min_rescan_interval=0)
    with pytest.raises(PacsError, match="does not exist") as info:
        await fetch(source, Target("1.2.3"))
    assert str(folder) in info.value.message
    probe = await source.probe()
    assert not probe.ok
    assert "does not exist" in probe.detail


@pytest.mark.anyio
async def test_probe_reports_the_instance_count(
    folder: Path, study: SampleStudy, other_study: SampleStudy
) -> None:
    source = source_for(folder, min_rescan_interval=0)
    probe = await source.probe()
    assert probe.ok
    assert probe.detail == "5 instances in 1 study"
    assert probe.latency_ms >= 0
    write_study(other_study, folder / "later")
    probe = await source.probe()
    assert probe.detail == "7 instances in 2 studies"
    await source.aclose()


@pytest.mark.anyio
async def test_empty_folder(tmp_path: Path) -> None:
    source = source_for(tmp_path)
    assert (await source.probe()).detail == "0 instances in 0 studies"
    with pytest.raises(NotFound):
        await fetch(source, Target("1.2.3"))


@pytest.mark.anyio
async def test_unreadable_file_is_a_pacs_error(folder: Path, study: SampleStudy) -> None:
    source = source_for(folder, min_rescan_interval=3600)
    series = study.series[0]
    target = Target(study.study_uid, series.series_uid, series.sop_uids[0])
    assert len(await fetch(source, target)) == 1
    # Unreadable even for root: the indexed path is now a directory.
    path = folder / "nested" / "deeper" / series.series_uid / f"{series.sop_uids[0]}.dcm"
    path.unlink()
    path.mkdir()
    with pytest.raises(PacsError, match=re.escape(f"could not read {path.name}")):
        await fetch(source, target)


@pytest.mark.anyio
async def test_indexing_starts_before_the_first_request_and_is_joined_by_it(
    folder: Path, study: SampleStudy, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans: list[Path] = []
    scan = FolderIndex.scan

    def counting(index: FolderIndex) -> None:
        scans.append(index.root)
        scan(index)

    monkeypatch.setattr(FolderIndex, "scan", counting)
    source = source_for(folder, min_rescan_interval=3600)
    source.start_indexing()  # what the app does at start-up
    assert len(await fetch(source, Target(study.study_uid))) == 5
    source.start_indexing()  # indexed already: nothing to do
    assert scans == [folder]
