"""The ``route`` label of the request metrics: a bounded set of values, never a caller's
id (docs/operations.md, "Labels")."""

from __future__ import annotations

import pytest

from model_proxy.metrics.registry import route_family


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("/segmentations/0b1c/studies/1.2/series/1.2.3", "segmentations"),
        ("/status", "status"),
        ("/jobs", "jobs"),
        ("/jobs/6f1e2d", "jobs"),
        ("/jobs/6f1e2d/result", "jobs"),
        ("/jobs/6f1e2d/events", "job-events"),
        # Not routes of the app: no family of their own, and no id as a label value.
        ("/jobs/", "other"),
        ("/jobs//events", "other"),
        ("/jobs/6f1e2d/logs", "other"),
        ("/jobs/6f1e2d/events/more", "other"),
        ("/jobsearch", "other"),
        ("/", "other"),
    ],
)
def test_route_family(path: str, family: str) -> None:
    assert route_family(path) == family
