"""Building the viewer's result documents (docs/compatibility.md §6) from analysed slices.

Every result is nested by the UIDs found in the received files::

    {StudyUID: {SeriesUID: {SOPInstanceUID: {...}, "metadata": [...]}, "metadata": [...]}}

Masks stay numpy arrays here; the app serialises them with
``orjson.OPT_SERIALIZE_NUMPY``, which writes a 512x512 mask about 5x faster
than ``ndarray.tolist()`` then orjson (30x faster than the json module).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .algorithms import Slice, outline

__all__ = [
    "Received",
    "SeriesGroup",
    "annotation",
    "compare_series",
    "group_series",
    "metadata",
    "prediction",
    "segmentation",
]

Result = dict[str, Any]

BODY_COLOR = "salmon"
LUNG_COLOR = "lightskyblue"
OUTLINE_COLOR = "yellow"


@dataclass(frozen=True)
class Received:
    """An analysed slice and whether it came as one bare instance string."""

    slice: Slice
    single: bool


@dataclass
class SeriesGroup:
    study_uid: str
    series_uid: str
    items: list[Received] = field(default_factory=list)

    @property
    def body_volume_cm3(self) -> float:
        return sum(item.slice.body_volume_cm3 for item in self.items)

    @property
    def lung_volume_cm3(self) -> float:
        return sum(item.slice.lung_volume_cm3 for item in self.items)


def metadata(
    data_type: str, value: str | float, title: str, description: str | None = None
) -> dict[str, Any]:
    """One Metadata entry: ``data_type`` is percentage, date, text or number."""
    entry: dict[str, Any] = {"dataType": data_type, "value": value, "title": title}
    if description is not None:
        entry["description"] = description
    return entry


def group_series(received: Iterable[Received]) -> list[SeriesGroup]:
    """Group by (study, series) in order of arrival; sort each by InstanceNumber.

    The proxy gives no ordering guarantee, so the model must sort itself.
    """
    groups: dict[tuple[str, str], SeriesGroup] = {}
    for item in received:
        key = (item.slice.study_uid, item.slice.series_uid)
        groups.setdefault(key, SeriesGroup(*key)).items.append(item)
    for group in groups.values():
        group.items.sort(key=lambda item: (item.slice.instance_number, item.slice.sop_uid))
    return list(groups.values())


def segmentation(groups: list[SeriesGroup], summary: bool) -> Result:
    """Body and lung masks per instance; volumes per series when ``summary``."""
    result: Result = {}
    for group in groups:
        node = _series_node(result, group)
        for item in group.items:
            node[item.slice.sop_uid] = {
                "segments": [
                    _segment(item.slice.body, BODY_COLOR, "Body"),
                    _segment(item.slice.lungs, LUNG_COLOR, "Lungs"),
                ]
            }
        if summary:
            node["metadata"] = [
                metadata("text", f"{group.lung_volume_cm3:.0f} cm3", "Lung volume"),
                metadata("text", f"{group.body_volume_cm3:.0f} cm3", "Body volume"),
            ]
    return result


def annotation(groups: list[SeriesGroup]) -> Result:
    """A body outline polygon per instance; slices without a body get no ROI."""
    result: Result = {}
    for group in groups:
        node = _series_node(result, group)
        for item in group.items:
            polygon = outline(item.slice.body)
            rois = [{"points": polygon, "color": OUTLINE_COLOR, "className": "Body outline"}]
            node[item.slice.sop_uid] = {"rois": rois if polygon else []}
    return result


def prediction(groups: list[SeriesGroup], summary: bool) -> Result:
    """Metadata only: lung area per single instance, volumes per series, counts per study."""
    result: Result = {}
    studies: dict[str, list[SeriesGroup]] = {}
    for group in groups:
        studies.setdefault(group.study_uid, []).append(group)
        node = _series_node(result, group)
        for item in group.items:
            if item.single:
                area = round(item.slice.lung_area_cm2, 2)
                area_entry = metadata("number", area, "Lung area", "cm2")
                node[item.slice.sop_uid] = {"metadata": [area_entry]}
        if summary:
            node["metadata"] = _volumes(group)
    if summary:
        for study_uid, members in studies.items():
            result[study_uid]["metadata"] = [
                metadata("number", len(members), "Series"),
                metadata("number", sum(len(g.items) for g in members), "Instances"),
                metadata("text", "HU thresholds", "Method", "the bundled example model"),
            ]
    return result


def compare_series(first: SeriesGroup, second: SeriesGroup) -> Result:
    """The two-series model: each series' volumes and the lung volume change."""
    result: Result = {}
    for group, label in ((first, "series one"), (second, "series two")):
        _series_node(result, group)["metadata"] = _volumes(group, f" ({label})")
    a, b = first.lung_volume_cm3, second.lung_volume_cm3
    change = (b - a) / a * 100.0 if a > 0 else 0.0
    result[first.study_uid].setdefault("metadata", []).extend(
        [
            metadata("number", round(a, 1), "Lung volume, series one (cm3)"),
            metadata("number", round(b, 1), "Lung volume, series two (cm3)"),
            metadata("number", round(b - a, 1), "Lung volume difference (cm3)", "two minus one"),
            metadata("percentage", round(change, 2), "Lung volume change"),
        ]
    )
    return result


def _volumes(group: SeriesGroup, suffix: str = "") -> list[dict[str, Any]]:
    body, lungs = group.body_volume_cm3, group.lung_volume_cm3
    fraction = lungs / body * 100.0 if body > 0 else 0.0
    return [
        metadata("number", round(body, 1), f"Body volume{suffix}", "cm3"),
        metadata("number", round(lungs, 1), f"Lung volume{suffix}", "cm3"),
        metadata("percentage", round(fraction, 2), f"Lung fraction{suffix}", "of body volume"),
    ]


def _series_node(result: Result, group: SeriesGroup) -> Result:
    study: Result = result.setdefault(group.study_uid, {})
    node: Result = study.setdefault(group.series_uid, {})
    return node


def _segment(mask: np.ndarray[Any, Any], color: str, class_name: str) -> dict[str, Any]:
    # A bool view as uint8 serialises as 0/1 rather than true/false, without a copy.
    return {"points": mask.view(np.uint8), "color": color, "className": class_name}
