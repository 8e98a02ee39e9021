"""Where DICOM results are made on disk: ``<data-dir>/dicom-outputs/`` (docs/dicom-outputs.md,
"Leftovers of a killed process").

Each conversion gets a folder of its own, removed once its answer is sent; a process
killed meanwhile leaves it behind, with patient data in it. So a process makes those
folders inside one folder it owns, ``proxy-<pid>-<random>/``, and holds an exclusive
``flock`` on its sibling ``proxy-<pid>-<random>.lock`` while it runs. The kernel drops
that lock when the process ends, however it ends (SIGKILL, OOM killer), so at start-up a
lock that can be taken marks the folder of a process that no longer runs, and it is
removed; a lock that is held marks a running process's (another proxy on the same data
dir), left alone. A process id alone cannot tell that (a container's proxy is PID 1 at
every start, and two containers sharing a volume each have a PID 1), nor can an age (a
long conversion looks old; a leftover would wait until it is old enough).

    claim_at_start(settings.data_dir)       # app start-up: leftovers removed
    spool = folders_for(settings.data_dir).new_folder()  # one conversion's folder
    release(settings.data_dir)              # app shutdown
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

OUTPUTS_FOLDER = "dicom-outputs"
_OWNER_PREFIX = "proxy-"
_LOCK_SUFFIX = ".lock"
# A lock file is created under this suffix, locked, then renamed to ``.lock``: a lock
# file is never seen unlocked under its final name while its owner runs.
_CLAIM_SUFFIX = ".claim"
# Folders of versions before owner folders: made straight under dicom-outputs by
# tempfile.mkdtemp(), they had no owner; one process owned a data dir then, as now.
_LEGACY_PREFIX = "tmp"


@dataclass
class OutputFolders:
    """This process's folder under ``<data-dir>/dicom-outputs`` and its held lock."""

    folder: Path
    lock_path: Path
    lock_fd: int
    users: int = 0

    def new_folder(self) -> Path:
        """A new folder, private to one conversion (mode 0700)."""
        try:
            return Path(tempfile.mkdtemp(dir=self.folder))
        except FileNotFoundError:
            # Someone removed it (by hand, while the proxy ran): make it again.
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(dir=self.folder))


_claimed: dict[Path, OutputFolders] = {}
_claimed_lock = threading.Lock()


def claim(data_dir: Path) -> OutputFolders:
    """This process's output folders under ``data_dir``; the first claim removes what
    processes that no longer run left there. Each claim is ended by ``release()``.
    Blocking file work: call it in a thread from async code."""
    with _claimed_lock:
        found = _claim_locked(data_dir)
        found.users += 1
        return found


def claim_at_start(data_dir: Path) -> None:
    """``claim()`` for the app's start-up: a data dir it cannot use is logged, not fatal
    (the conversions then fail on their own, as before the first conversion)."""
    try:
        claim(data_dir)
    except OSError as exc:
        logger.warning("DICOM outputs: cannot use %s (%s)", data_dir / OUTPUTS_FOLDER, exc)


def folders_for(data_dir: Path) -> OutputFolders:
    """The output folders of ``data_dir``, claimed by the app's start-up; claimed here
    (and kept until the process ends) when a conversion runs outside a running app."""
    with _claimed_lock:
        return _claim_locked(data_dir)


def release(data_dir: Path) -> None:
    """End a claim; the last one removes this process's folder and its lock."""
    root = (data_dir / OUTPUTS_FOLDER).absolute()
    with _claimed_lock:
        found = _claimed.get(root)
        if found is None:
            return
        found.users -= 1
        if found.users > 0:
            return
        del _claimed[root]
    shutil.rmtree(found.folder, ignore_errors=True)
    found.lock_path.unlink(missing_ok=True)
    os.close(found.lock_fd)


def remove_leftovers(root: Path) -> list[str]:
    """Remove the folders under ``root`` of processes that no longer run (their lock can
    be taken, or they have none); the names removed, for the log."""
    removed: list[str] = []
    for entry in sorted(root.iterdir()):
        name = entry.name
        if name.endswith((_LOCK_SUFFIX, _CLAIM_SUFFIX)) and name.startswith(_OWNER_PREFIX):
            owner = name.rsplit(".", 1)[0]
            if _remove_if_unlocked(entry, root / owner):
                removed.append(owner)
        elif entry.is_dir() and not entry.is_symlink():
            ownerless = name.startswith(_LEGACY_PREFIX) or (
                name.startswith(_OWNER_PREFIX) and not (root / f"{name}{_LOCK_SUFFIX}").exists()
            )
            if ownerless:
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(name)
    return removed


def _claim_locked(data_dir: Path) -> OutputFolders:
    root = (data_dir / OUTPUTS_FOLDER).absolute()
    found = _claimed.get(root)
    if found is not None:
        return found
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    removed = remove_leftovers(root)
    if removed:
        logger.warning(
            "removed DICOM results left in %s by %d stopped process(es): %s",
            root,
            len(removed),
            ", ".join(sorted(set(removed))),
        )
    found = _claimed[root] = _take_ownership(root)
    return found


def _take_ownership(root: Path) -> OutputFolders:
    while True:
        owner = f"{_OWNER_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        claim_path = root / f"{owner}{_CLAIM_SUFFIX}"
        lock_path = root / f"{owner}{_LOCK_SUFFIX}"
        fd = os.open(claim_path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(claim_path, lock_path)
        except OSError:
            # Another process's start-up took the unlocked .claim for a leftover and
            # removed it between our open and our lock: try a new name.
            os.close(fd)
            continue
        folder = root / owner
        folder.mkdir(mode=0o700)
        return OutputFolders(folder, lock_path, fd)


def _remove_if_unlocked(lock_path: Path, folder: Path) -> bool:
    """Remove ``folder`` and ``lock_path`` when no running process holds the lock."""
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return False  # removed meanwhile by another process's start-up
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its process runs
        shutil.rmtree(folder, ignore_errors=True)
        lock_path.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)
