"""A model's JSON result (docs/compatibility.md §6) -> the DICOM objects that carry it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset

from model_proxy.config import Task
from model_proxy.dicom_results.framing import part10
from model_proxy.dicom_results.seg import Algorithm, build_segmentation
from model_proxy.errors import ErrorCode, ModelError
from model_proxy.pacs.source import Target


@dataclass(frozen=True)
class DicomObject:
    """A converted object: its Part-10 file and the UIDs a caller reports."""

    sop_instance_uid: str
    series_instance_uid: str
    modality: str
    data: bytes

    @classmethod
    def of(cls, dataset: Dataset) -> DicomObject:
        return cls(
            str(dataset.SOPInstanceUID),
            str(dataset.SeriesInstanceUID),
            str(dataset.Modality),
            part10(dataset),
        )


def result_series(result: Any, model_id: str) -> list[Target]:
    """The (study, series) pairs a result is nested by; ModelError if it is not nested so."""
    if not isinstance(result, dict):
        raise ModelError(
            f"model {model_id}: the result is not a JSON object keyed by study UID",
            code=ErrorCode.MODEL_BAD_RESPONSE,
        )
    return [
        Target(study, series)
        for study, study_node in result.items()
        if isinstance(study_node, dict)
        for series, series_node in study_node.items()
        if series != "metadata" and isinstance(series_node, dict)
    ]


def convert_result(
    task: Task,
    result: dict[str, Any],
    headers: Mapping[str, Dataset],
    algorithm: Algorithm,
    uid_root: str,
) -> list[DicomObject]:
    """The objects for ``result``: one SEG per series with segments (CPU-bound: run
    it in a thread)."""
    objects: list[DicomObject] = []
    if task is Task.SEGMENTATION:
        for target in result_series(result, algorithm.model_id):
            seg = build_segmentation(
                result[target.study][target.series], headers, algorithm, uid_root
            )
            if seg is not None:
                objects.append(DicomObject.of(seg))
    return objects
