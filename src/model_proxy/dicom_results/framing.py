"""A DICOM object as a Part-10 file."""

from __future__ import annotations

import io

from pydicom import Dataset


def part10(dataset: Dataset) -> bytes:
    """The Part-10 file of ``dataset`` (preamble, file meta, then the dataset)."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
