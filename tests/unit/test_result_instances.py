"""Result instances (SEG, SR) told apart from images by their SOP Class, for the
study retrievals that leave them out (pacs/result_instances.py)."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

from model_proxy.config import Level
from model_proxy.dicom_results.framing import part10
from model_proxy.models.body import Retrieval, plan_body
from model_proxy.pacs.result_instances import is_result_instance, is_result_sop_class
from model_proxy.pacs.source import Target
from model_proxy.sample_data import make_study

CT = "1.2.840.10008.5.1.4.1.1.2"


def _instance(sop_class: str) -> bytes:
    study = make_study(series_slices=(1,), rows=16, columns=16, seed=3)
    _, _, data = next(study.iter_instances())
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.SOPClassUID = UID(sop_class)
    dataset.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    return part10(dataset)


@pytest.mark.parametrize(
    ("sop_class", "result"),
    [
        (CT, False),
        ("1.2.840.10008.5.1.4.1.1.66.4", True),  # Segmentation
        ("1.2.840.10008.5.1.4.1.1.88.33", True),  # Comprehensive SR
        ("1.2.840.10008.5.1.4.1.1.88.59", True),  # Key Object Selection
        ("1.2.840.10008.5.1.4.1.1.481.3", True),  # RT Structure Set
        ("1.2.840.10008.5.1.4.1.1.4", False),  # MR Image
    ],
)
def test_the_sop_class_in_the_file_meta_decides(sop_class: str, result: bool) -> None:
    assert is_result_sop_class(sop_class) is result
    assert is_result_instance(_instance(sop_class)) is result


def test_a_file_without_its_meta_is_read_for_its_sop_class() -> None:
    dataset = pydicom.dcmread(io.BytesIO(_instance("1.2.840.10008.5.1.4.1.1.66.4")))
    buffer = DicomBytesIO()  # the dataset alone: no preamble, no file meta
    buffer.is_little_endian = True
    buffer.is_implicit_VR = True
    write_dataset(buffer, dataset)
    assert is_result_instance(buffer.getvalue()) is True
    assert is_result_instance(b"not DICOM at all") is False


def test_only_a_whole_study_leaves_results_out_unless_the_model_asks() -> None:
    study, series = Target("1.2"), Target("1.2", "1.3")
    (whole,) = plan_body(Level.STUDY, study)
    assert isinstance(whole, Retrieval) and whole.leave_out_results
    (asked,) = plan_body(Level.STUDY, study, send_result_objects=True)
    assert isinstance(asked, Retrieval) and not asked.leave_out_results
    (named,) = plan_body(Level.SERIES, series)
    assert isinstance(named, Retrieval) and not named.leave_out_results
