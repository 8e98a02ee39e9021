"""A DICOM object as a Part-10 file."""

from __future__ import annotations

import io
from pathlib import Path

from pydicom import Dataset


def part10(dataset: Dataset) -> bytes:
    """The Part-10 file of ``dataset`` (preamble, file meta, then the dataset)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_part10(dataset: Dataset, path: Path) -> None:
    """``dataset`` as a Part-10 file at ``path``."""
    with open(path, "wb") as file:
        dataset.save_as(file, enforce_file_format=True)
