"""Symlinks in a file:// folder: a link to a file outside the folder is neither indexed
nor served unless --allow-symlinks-outside-folder says so; links inside it are."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from model_proxy.config import ServerConfig, parse_servers
from model_proxy.errors import NotFound
from model_proxy.pacs.local_folder import FolderIndex, LocalFolderSource
from model_proxy.pacs.source import Target
from model_proxy.sample_data import SampleStudy, make_study, write_study

SERVER_ID = "b1407f18-575d-487c-bc0c-640c6da651bc"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def inside_study() -> SampleStudy:
    return make_study(series_slices=(2,), rows=16, columns=16, seed=21)


@pytest.fixture(scope="module")
def outside_study() -> SampleStudy:
    return make_study(series_slices=(1,), rows=16, columns=16, seed=22)


@pytest.fixture
def folder(tmp_path: Path, inside_study: SampleStudy, outside_study: SampleStudy) -> Path:
    """``dicom/`` holds one study, a link to one of its own files, and a link to a file
    of another study kept outside it (as ``/etc/...`` would be)."""
    root = tmp_path / "dicom"
    inside = write_study(inside_study, root)
    (outside,) = write_study(outside_study, tmp_path / "elsewhere")
    os.symlink(inside[0], root / "alias.dcm")
    os.symlink(outside, root / "escape.dcm")
    return root


def server_for(folder: Path) -> ServerConfig:
    servers, _warnings = parse_servers({SERVER_ID: {"uri": folder.as_uri()}})
    return servers[SERVER_ID]


def test_a_link_outside_the_folder_is_not_indexed(
    folder: Path,
    inside_study: SampleStudy,
    outside_study: SampleStudy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    index = FolderIndex(folder)
    with caplog.at_level(logging.WARNING):
        index.scan()
        index.scan()  # warned once, not on every scan
    assert set(index.studies) == {inside_study.study_uid}
    assert outside_study.study_uid not in index.studies
    warnings = [r.getMessage() for r in caplog.records if "escape.dcm" in r.getMessage()]
    assert len(warnings) == 1 and "--allow-symlinks-outside-folder" in warnings[0]


def test_a_link_inside_the_folder_is_indexed(folder: Path, inside_study: SampleStudy) -> None:
    index = FolderIndex(folder)
    index.scan()
    series = inside_study.series[0]
    paths = index.lookup(Target(inside_study.study_uid, series.series_uid))
    # alias.dcm and its target carry the same SOP Instance UID: one of them is served.
    assert len(paths) == len(series.sop_uids)


def test_the_option_serves_links_outside_the_folder(
    folder: Path, outside_study: SampleStudy
) -> None:
    index = FolderIndex(folder, allow_outside_links=True)
    index.scan()
    assert outside_study.study_uid in index.studies


@pytest.mark.anyio
async def test_a_file_that_becomes_an_outside_link_after_the_scan_is_not_read(
    folder: Path, tmp_path: Path, inside_study: SampleStudy
) -> None:
    source = LocalFolderSource(server_for(folder), min_rescan_interval=3600)
    target = Target(inside_study.study_uid)
    assert await source.fingerprint(target) is not None  # indexed now
    secret = tmp_path / "secret.txt"
    secret.write_text("not for viewers")
    for path in folder.rglob("*.dcm"):
        if not path.is_symlink():
            path.unlink()
            os.symlink(secret, path)
    with pytest.raises(NotFound, match="links outside the folder"):
        async with source.retrieve(target) as instances:
            async for _ in instances:
                pass
