"""The owner folders under ``<data-dir>/dicom-outputs`` (inference/output_folders.py):
what start-up removes and what it leaves, on a real file system with real ``flock``s.
Another process's held lock is a lock taken through a file description of its own (the
kernel keeps ``flock`` per open file description, so it conflicts within one process
too); the end-to-end test with a killed proxy is
tests/integration/test_dicom_output_leftovers.py."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

from model_proxy.inference import output_folders


def owner(root: Path, name: str, *, held: bool) -> tuple[Path, int | None]:
    """An owner folder with a conversion's spool in it; ``held``: its lock is held."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    if held:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    else:
        os.close(fd)
    spool = root / name / "tmpabc" / "masks.spool"
    spool.parent.mkdir(parents=True)
    spool.write_bytes(b"\x01" * 64)
    return spool, fd if held else None


def test_start_up_removes_what_stopped_processes_left_and_keeps_a_running_ones(
    tmp_path: Path,
) -> None:
    root = tmp_path / "dicom-outputs"
    dead, _ = owner(root, "proxy-4242-dead0001", held=False)
    live, live_fd = owner(root, "proxy-77-live0001", held=True)
    assert live_fd is not None
    (root / "proxy-4243-half0001.claim").touch()  # killed between create and rename
    (root / "proxy-4244-nolock01" / "tmpx").mkdir(parents=True)  # its lock already gone
    (root / "tmp8c2kq1" / "seg-0.dcm").parent.mkdir()  # of a version before owner folders
    (root / "notes.txt").write_text("not ours")
    try:
        folders = output_folders.claim(tmp_path)
        assert not dead.exists() and not (root / "proxy-4242-dead0001").exists()
        assert not (root / "proxy-4242-dead0001.lock").exists()
        assert not (root / "proxy-4243-half0001.claim").exists()
        assert not (root / "proxy-4244-nolock01").exists()
        assert not (root / "tmp8c2kq1").exists()
        assert live.read_bytes() == b"\x01" * 64
        assert (root / "notes.txt").read_text() == "not ours"

        # Its own folder: named by its pid, locked while it runs.
        assert folders.folder.name.startswith(f"proxy-{os.getpid()}-")
        conversion = folders.new_folder()
        assert conversion.parent == folders.folder and conversion.stat().st_mode & 0o077 == 0
        probe = os.open(folders.lock_path, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(probe)
    finally:
        output_folders.release(tmp_path)
        os.close(live_fd)


def test_claims_are_counted_and_the_last_release_removes_the_folder(tmp_path: Path) -> None:
    data_dir = tmp_path
    first = output_folders.claim(data_dir)
    second = output_folders.claim(data_dir)  # a second app on the same data dir
    assert second is first
    spool = first.new_folder() / "masks.spool"
    spool.write_bytes(b"\x00")
    output_folders.release(data_dir)
    assert spool.exists()
    output_folders.release(data_dir)
    assert not first.folder.exists() and not first.lock_path.exists()
    assert list((data_dir / "dicom-outputs").iterdir()) == []


def test_a_data_dir_it_cannot_use_is_a_warning_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    output_folders.claim_at_start(not_a_folder)
    assert "DICOM outputs: cannot use" in caplog.text
    output_folders.release(not_a_folder)  # nothing was claimed: nothing to do
