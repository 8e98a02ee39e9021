"""A model's JSON result (docs/compatibility.md §6) -> the DICOM objects that carry it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset

from model_proxy.config import Task
from model_proxy.dicom_results.framing import write_part10
from model_proxy.dicom_results.seg import Algorithm, build_segmentation
from model_proxy.dicom_results.sr import build_annotation_sr, build_prediction_sr
from model_proxy.errors import ErrorCode, ModelError
from model_proxy.pacs.source import Target


@dataclass(frozen=True)
class DicomObject:
    """A converted object: its Part-10 file (spooled under the data dir, so that no
    object is held whole in memory) and the UIDs a caller reports."""

    sop_instance_uid: str
    series_instance_uid: str
    modality: str
    path: Path

    @classmethod
    def of(cls, dataset: Dataset, path: Path) -> DicomObject:
        """``dataset`` written to ``path``; ``dataset`` may then be dropped."""
        write_part10(dataset, path)
        return cls.at(dataset, path)

    @classmethod
    def at(cls, dataset: Dataset, path: Path) -> DicomObject:
        """The object already written to ``path`` (``dataset``: its UIDs)."""
        return cls(
            str(dataset.SOPInstanceUID), str(dataset.SeriesInstanceUID), str(dataset.Modality), path
        )


def result_series(result: Any, model_id: str) -> list[Target]:
    """The (study, series) pairs a result is nested by; ModelError if it is not nested so."""
    if not isinstance(result, dict):
        raise ModelError(
            f"model {model_id}: the result is not a JSON object keyed by study UID",
            code=ErrorCode.MODEL_BAD_RESPONSE,
        )
    targets: list[Target] = []
    for study, study_node in result.items():
        if not isinstance(study_node, dict):
            continue
        series = [
            Target(study, uid)
            for uid, node in study_node.items()
            if uid != "metadata" and isinstance(node, dict)
        ]
        # Study-level metadata alone still needs the study's patient and study attributes.
        targets += series or [Target(study)]
    return targets


def convert_result(
    task: Task,
    result: dict[str, Any],
    headers: Mapping[str, Dataset],
    algorithm: Algorithm,
    uid_root: str,
    out_dir: Path,
) -> list[DicomObject]:
    """The objects for ``result``, written into ``out_dir`` (CPU-bound: run it in a
    thread): a SEG per series with segments, an SR per series with rois, an SR per
    study with metadata. A segmentation of a whole series is better streamed
    (``seg_stream.py``); this builds it whole."""
    built: list[Dataset | None] = []
    if task is Task.PREDICTION:
        built = [
            build_prediction_sr(study, node, headers, algorithm, uid_root)
            for study, node in result.items()
            if isinstance(node, dict)
        ]
    else:
        build = build_segmentation if task is Task.SEGMENTATION else build_annotation_sr
        built = [
            build(result[target.study][target.series], headers, algorithm, uid_root)
            for target in result_series(result, algorithm.model_id)
        ]
    return [
        DicomObject.of(dataset, out_dir / f"{index}.dcm")
        for index, dataset in enumerate(built)
        if dataset is not None
    ]
