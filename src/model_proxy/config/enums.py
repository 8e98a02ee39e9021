"""The closed vocabularies of the config files, spelled as in the JSON."""

from __future__ import annotations

from enum import StrEnum


class AuthType(StrEnum):
    """How the proxy authenticates to a PACS server (docs/compatibility.md §7)."""

    NONE = ""
    BASIC = "basicAuth"
    TOKEN = "token"  # noqa: S105 (a name of an auth method, not a secret)
    ZHIVA = "zhivaAuth"
    # Beyond the original: OAuth 2.0 client credentials and a static bearer token.
    OAUTH2 = "oauth2"
    BEARER = "bearer"


class Task(StrEnum):
    """What a model does; decides which route family may call it."""

    SEGMENTATION = "segmentation"
    ANNOTATION = "annotation"
    PREDICTION = "prediction"

    @property
    def route_family(self) -> str:
        """The first path segment of the routes for this task: ``"segmentations"``."""
        return f"{self.value}s"

    @classmethod
    def from_route_family(cls, family: str) -> Task:
        for task in cls:
            if task.route_family == family:
                return task
        allowed = ", ".join(t.route_family for t in cls)
        raise ValueError(f"unknown route family {family!r}; expected one of {allowed}")


class Level(StrEnum):
    """A DICOM level a model accepts, spelled as in ``supports``."""

    STUDY = "/studies"
    SERIES = "/studies/series"
    INSTANCE = "/studies/series/instances"


class CacheValidation(StrEnum):
    """How a cached result is checked against the server before it is reused
    (``cacheValidation`` in servers.json, docs/performance.md)."""

    COUNT = "count"  # the number of instances of the study or series (QIDO)
    STRICT = "strict"  # the exact list of SOP Instance UIDs (QIDO)
    OFF = "off"  # results from this server are never cached


class InputFormat(StrEnum):
    """How a model wants the instances in its request body (models.json ``input``)."""

    JSON = "json"  # the original's wire format
    DICOM_MULTIPART = "dicom-multipart"  # Part-10 files as multipart/related parts
