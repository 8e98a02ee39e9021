"""What a proxy killed while making DICOM results leaves under
``<data-dir>/dicom-outputs/`` is removed when a proxy starts on that data dir; what a
running proxy on the same data dir is making is not (docs/dicom-outputs.md, "Leftovers
of a killed process"). Real proxy processes, one of them killed with SIGKILL."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from harness import ProxyFactory, ProxyProcess


def own_folder(proxy: ProxyProcess, known: set[Path]) -> Path:
    """The folder ``proxy`` made its own under dicom-outputs at start-up."""
    (folder,) = {
        p for p in (proxy.data_dir / "dicom-outputs").glob("proxy-*") if p.is_dir()
    } - known
    return folder


def spool_file(folder: Path) -> Path:
    """A conversion's spool, as seg_stream.py writes it, in ``folder``."""
    conversion = folder / "tmp1a2b3c4d"
    conversion.mkdir(mode=0o700)
    spool = conversion / "masks.spool"
    spool.write_bytes(b"\x00" * 4096)
    return spool


def test_a_killed_proxys_spool_files_go_at_start_and_a_running_proxys_stay(
    start_proxy: ProxyFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    outputs = data_dir / "dicom-outputs"
    running = start_proxy({}, {}, tls=False, data_dir=data_dir)
    running_folder = own_folder(running, set())
    in_flight = spool_file(running_folder)

    killed = start_proxy({}, {}, tls=False, data_dir=data_dir)
    killed_folder = own_folder(killed, {running_folder})
    left_behind = spool_file(killed_folder)
    pid = killed.process.pid
    assert pid is not None
    os.killpg(pid, signal.SIGKILL)  # no clean-up of its own
    killed.stop()  # reaped: the kernel has dropped its lock
    # A folder of a version before owner folders (tempfile.mkdtemp's name, no lock).
    legacy = outputs / "tmpq9w8e7r6" / "seg-0.dcm"
    legacy.parent.mkdir(mode=0o700)
    legacy.write_bytes(b"DICM")
    # Not something this proxy writes: left alone.
    foreign = outputs / "README.txt"
    foreign.write_text("not ours")

    started = start_proxy({}, {}, tls=False, data_dir=data_dir)

    assert not left_behind.exists() and not killed_folder.exists()
    assert not (outputs / f"{killed_folder.name}.lock").exists()
    assert not legacy.parent.exists()
    assert in_flight.read_bytes() == b"\x00" * 4096
    assert (outputs / f"{running_folder.name}.lock").exists()
    assert foreign.exists()
    assert f"{killed_folder.name}" in started.log_text()

    # A proxy that stops removes its own folder and lock.
    running.stop()
    assert not running_folder.exists()
    assert not (outputs / f"{running_folder.name}.lock").exists()
