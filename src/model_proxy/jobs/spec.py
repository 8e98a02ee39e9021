"""What a job asks for, as ``POST /jobs`` takes it and the job store keeps it.

A ``JobSpec`` is the JSON body checked for shape only; whether the model, the
level, the UIDs, the server and the data filters fit is checked by the same
code as the GET routes (``routes/jobs.py`` turns a spec into an
``InferenceRequest``), at submission and again when the job runs, on the config
then in force.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from model_proxy.errors import BadRequest, ErrorCode

# A spec is a few UIDs and data filters: a body past this is not one.
MAX_BODY_BYTES = 64 * 1024


class _Body(BaseModel):
    """The JSON of ``POST /jobs`` (docs/jobs.md)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: StrictStr
    study: StrictStr
    series: StrictStr | None = None
    instance: StrictStr | None = None
    server: StrictStr | None = None
    data_filters: list[Any] | None = Field(default=None, alias="dataFilters")
    # Store DICOM results in the PACS: accepted and kept, not acted on yet (docs/jobs.md).
    store: StrictBool = False


@dataclass(frozen=True)
class JobSpec:
    model: str
    study: str
    series: str | None = None
    instance: str | None = None
    server: str | None = None
    # As the caller wrote them; parsed by routes/params.py like ?data-filters=.
    data_filters: list[Any] | None = None
    store: bool = False
    caller: str | None = None

    @classmethod
    def from_body(cls, raw: bytes, caller: str | None) -> JobSpec:
        """The spec in a request body, or a 400 that says what is wrong with it."""
        if len(raw) > MAX_BODY_BYTES:
            raise BadRequest(
                f"the job description is over {MAX_BODY_BYTES} bytes", code=ErrorCode.BAD_REQUEST
            )
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(
                f"the body is not valid JSON ({exc.msg})", code=ErrorCode.INVALID_JOB
            ) from None
        try:
            body = _Body.model_validate(document)
        except ValidationError as exc:
            raise BadRequest(_first_problem(exc), code=ErrorCode.INVALID_JOB) from None
        if body.instance is not None and body.series is None:
            raise BadRequest("an instance needs its series", code=ErrorCode.INVALID_JOB)
        return cls(
            model=body.model,
            study=body.study,
            series=body.series,
            instance=body.instance,
            server=body.server,
            data_filters=body.data_filters,
            store=body.store,
            caller=caller,
        )

    def data_filter_items(self) -> list[tuple[str, str]]:
        """The data filters as a query string's items (routes/params.py reads those)."""
        if self.data_filters is None:
            return []
        return [("data-filters", orjson.dumps(self.data_filters).decode())]

    def dumps(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def loads(cls, text: str) -> JobSpec:
        return cls(**orjson.loads(text))


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"]) or "the body"
    if error["type"] == "missing":
        return f"the job description needs {where!r}"
    if error["type"] == "extra_forbidden":
        return f"{where!r} is not a field of a job description (see docs/jobs.md)"
    if error["type"] == "model_type":
        return "the body must be a JSON object (see docs/jobs.md)"
    return f"{where!r}: {error['msg']}"
