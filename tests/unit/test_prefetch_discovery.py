"""What the prefetch watcher learns from a source: a ``file://`` folder's studies of the
lookback window (by file time) with their counts and series attributes, and a QIDO-RS
row's attributes in words (pacs/qido.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from model_proxy.config import parse_servers
from model_proxy.pacs.local_folder import LocalFolderSource
from model_proxy.pacs.qido import tag_of, value_of
from model_proxy.prefetch.discovery import FolderDiscovery, discovery_for
from model_proxy.sample_data import make_study, write_study

pytestmark = pytest.mark.anyio
SERVER_ID = "b1407f18-575d-487c-bc0c-640c6da651bc"
KEYWORDS = ["Modality", "SeriesDescription", "StudyDescription"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_folder_lists_the_studies_of_the_window_with_series_attributes(
    tmp_path: Path,
) -> None:
    new = make_study(series_slices=(3, 2), rows=16, columns=16, seed=31)
    old = make_study(series_slices=(2,), rows=16, columns=16, seed=32)
    write_study(new, tmp_path / "new")
    ten_days_ago = time.time() - 10 * 86_400
    for path in write_study(old, tmp_path / "old"):
        os.utime(path, (ten_days_ago, ten_days_ago))
    servers, _warnings = parse_servers({SERVER_ID: {"uri": tmp_path.as_uri()}})
    source = LocalFolderSource(servers[SERVER_ID])
    discovery = discovery_for(source, lookback_days=1, max_studies=100)
    assert isinstance(discovery, FolderDiscovery)

    page = await discovery.studies(KEYWORDS)
    assert [(study.uid, study.instances) for study in page.found] == [(new.study_uid, 5)]
    assert not page.truncated
    series = {found.uid: found for found in await discovery.series(new.study_uid, KEYWORDS)}
    first, second = (series[s.series_uid] for s in new.series)
    assert first.instances == 3 and second.instances == 2
    assert first.attributes == {
        "Modality": "CT",
        "SeriesDescription": "Phantom CT 1",
        "StudyDescription": "Phantom chest CT",
    }
    # A longer window takes the old study in; the cap on studies per poll shows.
    wider = discovery_for(source, lookback_days=30, max_studies=1)
    assert wider is not None
    capped = await wider.studies(KEYWORDS)
    assert len(capped.found) == 1 and capped.truncated


def test_a_qido_row_in_words() -> None:
    row = {
        tag_of("Modality"): {"vr": "CS", "Value": ["CT"]},
        tag_of("ModalitiesInStudy"): {"vr": "CS", "Value": ["CT", "SR"]},
        tag_of("ReferringPhysicianName"): {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        tag_of("NumberOfStudyRelatedInstances"): {"vr": "IS", "Value": [36]},
        tag_of("StudyDescription"): {"vr": "LO"},  # present without a value: absent
    }
    assert value_of(row, tag_of("Modality")) == "CT"
    assert value_of(row, tag_of("ModalitiesInStudy")) == ("CT", "SR")
    assert value_of(row, tag_of("ReferringPhysicianName")) == "Doe^Jane"
    assert value_of(row, tag_of("NumberOfStudyRelatedInstances")) == "36"
    assert value_of(row, tag_of("StudyDescription")) is None
    assert value_of(row, tag_of("BodyPartExamined")) is None
