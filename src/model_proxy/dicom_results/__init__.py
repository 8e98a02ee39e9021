"""Model results as DICOM objects (docs/dicom-outputs.md).

``convert.py`` turns a JSON result into Part-10 files (``seg.py``: DICOM
Segmentation), ``headers.py`` reads the source instances' headers through the
source API, ``framing.py`` writes Part-10 files, ``uids.py`` makes UIDs
under ``--uid-root``.
"""

from model_proxy.dicom_results.convert import DicomObject, convert_result, result_series
from model_proxy.dicom_results.headers import source_headers
from model_proxy.dicom_results.seg import Algorithm
from model_proxy.dicom_results.seg_stream import stream_segmentations
from model_proxy.dicom_results.uids import UUID_ROOT, check_uid_root

__all__ = [
    "UUID_ROOT",
    "Algorithm",
    "DicomObject",
    "check_uid_root",
    "convert_result",
    "result_series",
    "source_headers",
    "stream_segmentations",
]
