"""Checks every test of DICOM results makes: dciodvfy finds no error, highdicom reads it,
the masks are the JSON's."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np


def dciodvfy_errors(path: Path) -> list[str]:
    """The lines of ``dciodvfy`` (dicom3tools) that report errors; warnings are allowed."""
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def assert_masks_equal(seg: hd.seg.Segmentation, series_node: dict[str, Any]) -> None:
    """Every JSON mask equals the SEG's frames of its instance and className, bit for bit."""
    labels = {d.SegmentLabel: d.SegmentNumber for d in seg.SegmentSequence}
    uids = [uid for uid in series_node if uid != "metadata"]
    for uid in uids:
        for segment in series_node[uid]["segments"]:
            number = labels[segment["className"]]
            pixels = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[uid], segment_numbers=[number], combine_segments=False
            )
            expected = np.asarray(segment["points"], dtype=np.uint8)
            assert np.array_equal(pixels[0, :, :, 0], expected), (uid, segment["className"])
