"""Checks every test of DICOM results makes: dciodvfy finds no error, highdicom reads it."""

from __future__ import annotations

import subprocess
from pathlib import Path


def dciodvfy_errors(path: Path) -> list[str]:
    """The lines of ``dciodvfy`` (dicom3tools) that report errors; warnings are allowed."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]
