"""Annotation and prediction results (docs/compatibility.md §6) as Comprehensive SR.

- annotation (``rois``: ``{"points": [[x, y], ...], "color", "className"}`` per
  instance) -> one SR per series following TID 1500 (Measurement Report): a planar
  ROI group (TID 1410) per roi, its polygon as SCOORD POLYLINE on the source image,
  the finding type named after the className;
- prediction (``metadata`` entries ``{"dataType", "value", "title", "description"?}``
  on the study, its series and instances) -> one SR per study: a container per
  node that references what it describes (study or series UID, or the image),
  numbers as NUM (with a UCUM unit where the value has one), the rest as TEXT.

Coordinates are written as the model gave them (pixel column and row indices).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes

from model_proxy.dicom_results.seg import MANUFACTURER, Algorithm, class_code
from model_proxy.dicom_results.uids import new_uid
from model_proxy.errors import ErrorCode, ModelError

ANNOTATION_SERIES_NUMBER = 9002
PREDICTION_SERIES_NUMBER = 9003
_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging")
# Units the example models and the original's viewers use, as UCUM (PS3.16 CID 7181).
_UCUM = {
    "mm": "millimeter",
    "cm": "centimeter",
    "mm2": "square millimeter",
    "cm2": "square centimeter",
    "mm3": "cubic millimeter",
    "cm3": "cubic centimeter",
    "ml": "milliliter",
    "mL": "milliliter",
    "%": "percent",
    "s": "second",
}
_NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
_COMMENT = hd.sr.CodedConcept("121106", "DCM", "Comment")
_FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")
_STUDY_UID = hd.sr.CodedConcept("110180", "DCM", "Study Instance UID")
_SERIES_UID = hd.sr.CodedConcept("112002", "DCM", "Series Instance UID")
_SOURCE = hd.sr.CodedConcept("121112", "DCM", "Source of Measurement")
_REPORT = hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report")


def build_annotation_sr(
    series_node: Mapping[str, Any],
    sources: Mapping[str, Dataset],
    algorithm: Algorithm,
    uid_root: str,
) -> Dataset | None:
    """The TID 1500 SR of one series' rois, or None when it has none."""
    groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations] = []
    images: list[Dataset] = []
    for uid, node in series_node.items():
        rois = node.get("rois") if isinstance(node, dict) else None
        if not isinstance(rois, list) or not rois:
            continue
        header = _source(sources, uid, algorithm)
        images.append(header)
        for number, roi in enumerate(rois, start=1):
            class_name = _text(roi.get("className") if isinstance(roi, dict) else None)
            region = hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=_points(roi, uid, algorithm),
                source_image=hd.sr.SourceImageForRegion.from_source_image(header),
            )
            groups.append(
                hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                    tracking_identifier=hd.sr.TrackingIdentifier(
                        uid=new_uid(uid_root), identifier=f"{class_name} {number}"[:64]
                    ),
                    referenced_region=region,
                    finding_type=class_code(class_name),
                    algorithm_id=hd.sr.AlgorithmIdentification(
                        algorithm.name[:64], algorithm.version[:64]
                    ),
                )
            )
    if not groups:
        return None
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(algorithm, uid_root),
        procedure_reported=_PROCEDURE,
        imaging_measurements=groups,
    )
    return _document(images, report[0], algorithm, uid_root, ANNOTATION_SERIES_NUMBER, "rois")


def build_prediction_sr(
    study_uid: str,
    study_node: Mapping[str, Any],
    sources: Mapping[str, Dataset],
    algorithm: Algorithm,
    uid_root: str,
) -> Dataset | None:
    """The SR of one study's metadata at every level, or None when it has none."""
    findings: list[hd.sr.ContainerContentItem] = []
    evidence = [h for h in sources.values() if h.StudyInstanceUID == study_uid]
    if not evidence:
        return None
    findings += _finding(study_node, [_uid_item(_STUDY_UID, study_uid)])
    for series_uid, series_node in study_node.items():
        if series_uid == "metadata" or not isinstance(series_node, dict):
            continue
        findings += _finding(series_node, [_uid_item(_SERIES_UID, series_uid)])
        for uid, node in series_node.items():
            if uid == "metadata" or not isinstance(node, dict):
                continue
            header = _source(sources, uid, algorithm)
            image = hd.sr.ImageContentItem(
                name=_SOURCE,
                referenced_sop_class_uid=header.SOPClassUID,
                referenced_sop_instance_uid=header.SOPInstanceUID,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            findings += _finding(node, [image])
    if not findings:
        return None
    root = hd.sr.ContainerContentItem(name=_REPORT)
    root.ContentSequence = hd.sr.ContentSequence(
        [*_observation_context(algorithm, uid_root), *findings]
    )
    return _document(evidence, root, algorithm, uid_root, PREDICTION_SERIES_NUMBER, "metadata")


def _finding(
    node: Mapping[str, Any], reference: list[hd.sr.ContentItem]
) -> list[hd.sr.ContainerContentItem]:
    entries = node.get("metadata")
    if not isinstance(entries, list) or not entries:
        return []
    container = hd.sr.ContainerContentItem(
        name=_FINDING, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [*reference, *(_value_item(entry) for entry in entries if isinstance(entry, dict))]
    )
    return [container]


def _value_item(entry: Mapping[str, Any]) -> hd.sr.ContentItem:
    """NUM for a number or a percentage, TEXT otherwise; the description becomes the
    unit when it is one, else a comment on the item."""
    title = _text(entry.get("title"))
    value = entry.get("value")
    description = entry.get("description")
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    item: hd.sr.ContentItem
    note = description if isinstance(description, str) and description else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        unit = _NO_UNITS
        if entry.get("dataType") == "percentage":
            unit = hd.sr.CodedConcept("%", "UCUM", "percent")
        elif note in _UCUM:
            unit = hd.sr.CodedConcept(note, "UCUM", _UCUM[note])
            note = None
        item = hd.sr.NumContentItem(
            name=class_code(title), value=value, unit=unit, relationship_type=contains
        )
    else:
        item = hd.sr.TextContentItem(
            name=class_code(title), value=str(value), relationship_type=contains
        )
    if note is not None:
        item.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.TextContentItem(
                    name=_COMMENT,
                    value=note,
                    relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES,
                )
            ]
        )
    return item


def _uid_item(name: hd.sr.CodedConcept, uid: str) -> hd.sr.ContentItem:
    return hd.sr.UIDRefContentItem(
        name=name, value=uid, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )


def _observation_context(algorithm: Algorithm, uid_root: str) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=new_uid(uid_root),
        name=algorithm.name[:64],
        manufacturer_name=MANUFACTURER,
        model_name=algorithm.version[:64],
        serial_number=algorithm.model_id[:64],
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def _document(
    evidence: Iterable[Dataset],
    content: Dataset,
    algorithm: Algorithm,
    uid_root: str,
    series_number: int,
    what: str,
) -> Dataset:
    return hd.sr.ComprehensiveSR(
        evidence=list(evidence),
        content=content,
        series_instance_uid=new_uid(uid_root),
        series_number=series_number,
        sop_instance_uid=new_uid(uid_root),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=f"{algorithm.name} {what}"[:64],
    )


def _source(sources: Mapping[str, Dataset], uid: str, algorithm: Algorithm) -> Dataset:
    header = sources.get(uid)
    if header is None:
        raise ModelError(
            f"model {algorithm.model_id}: the result names instance {uid[:64]},"
            " which is not among the instances sent to it",
            code=ErrorCode.MODEL_BAD_RESPONSE,
        )
    return header


def _points(roi: Any, uid: str, algorithm: Algorithm) -> np.ndarray[Any, np.dtype[np.float32]]:
    points = roi.get("points") if isinstance(roi, dict) else None
    try:
        array = np.asarray(points, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        array = np.zeros(0, dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != 2 or len(array) < 2 or (array < 0).any():
        raise ModelError(
            f"model {algorithm.model_id}: a roi of instance {uid[:64]} is not a list of"
            " at least two [x, y] points",
            code=ErrorCode.MODEL_BAD_RESPONSE,
        )
    return array


def _text(value: Any) -> str:
    return value if isinstance(value, str) and value else "unnamed"
