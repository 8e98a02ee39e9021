"""The jobs routes in ``/openapi.json`` (routes/openapi.py puts them in the document)."""

from __future__ import annotations

from typing import Any

from model_proxy.inference.progress import Phase
from model_proxy.jobs import JobStatus
from model_proxy.jobs.spec import MAX_BODY_BYTES
from model_proxy.routes.params import UID_MAX_LENGTH, UID_PATTERN


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_UID = {"type": "string", "pattern": f"^{UID_PATTERN}$", "maxLength": UID_MAX_LENGTH}
_NULLABLE_UID = {"anyOf": [_UID, {"type": "null"}]}
_TIME = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "null"}]}
_LINKS = {
    "type": "object",
    "required": ["self", "result", "events"],
    "properties": {name: {"type": "string"} for name in ("self", "result", "events")},
}
_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "description": "The job's id, from POST /jobs or the Location of a 202",
    "schema": {"type": "string"},
}
_AUTH_ERRORS = {
    "401": _error("Client authentication is configured and the request has no valid credentials"),
    "403": _error("The caller may not use the job's model"),
}
_JOB_OR_404 = {"404": _error("No such job (`unknown_job`), or jobs are off (`jobs_unavailable`)")}
_JOB_ANSWER = {
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Job"}}},
}

SCHEMAS: dict[str, Any] = {
    "JobRequest": {
        "type": "object",
        "required": ["model", "study"],
        "additionalProperties": False,
        "description": f"At most {MAX_BODY_BYTES} bytes. The level is that of the most"
        " specific UID given; the same checks as the GET routes apply.",
        "properties": {
            "model": {"type": "string", "description": "The key of the model in models.json"},
            "study": _UID,
            "series": _UID,
            "instance": {**_UID, "description": "Needs `series`"},
            "server": {"type": "string", "description": "A servers.json key; default server"},
            "dataFilters": {"$ref": "#/components/schemas/DataFilters"},
            "store": {
                "type": "boolean",
                "description": "Also store the result in the PACS as DICOM (SEG or SR) once"
                " the model has answered, as `?store=true` does; a model whose models.json"
                " entry has `store` always stores (docs/jobs.md)",
            },
        },
    },
    "JobAccepted": {
        "type": "object",
        "required": ["id", "status", "links"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": [status.value for status in JobStatus]},
            "links": _LINKS,
        },
    },
    "Job": {
        "type": "object",
        "required": ["id", "status", "model", "study", "progress", "links", "created"],
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": [status.value for status in JobStatus]},
            "model": {"type": "string"},
            "server": {"type": ["string", "null"]},
            "study": {"type": "string"},
            "series": {"type": ["string", "null"]},
            "instance": {"type": ["string", "null"]},
            "store": {"type": "boolean"},
            "created": _TIME,
            "started": _TIME,
            "finished": _TIME,
            "attempts": {"type": "integer", "minimum": 0},
            "progress": {
                "type": "object",
                "required": ["phase", "instancesTotal", "instancesSent", "bytesSent"],
                "properties": {
                    "phase": {"enum": [phase.value for phase in Phase]},
                    "instancesTotal": {"type": ["integer", "null"], "minimum": 0},
                    "instancesSent": {"type": "integer", "minimum": 0},
                    "bytesSent": {"type": "integer", "minimum": 0},
                },
            },
            "error": {
                "anyOf": [{"$ref": "#/components/schemas/Error"}, {"type": "null"}],
            },
            "stored": {
                "type": ["array", "null"],
                "items": {"type": "string"},
                "description": "The SOP Instance UIDs the store step stored; null without one",
            },
            "storeError": {
                "anyOf": [{"$ref": "#/components/schemas/Error"}, {"type": "null"}],
                "description": "Why a store that models.json does not require failed"
                " (the job still succeeds)",
            },
            "links": _LINKS,
        },
    },
}

ACCEPTED = {
    "description": "A job runs it (`Prefer: respond-async` on a GET route, or POST /jobs);"
    " `Location` names the job (docs/jobs.md)",
    "headers": {"Location": {"schema": {"type": "string"}}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobAccepted"}}},
}

PATHS: dict[str, Any] = {
    "/jobs": {
        "post": {
            "summary": "Run a model in the background",
            "operationId": "create_job",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}
                },
            },
            "responses": {
                "202": ACCEPTED,
                "400": _error("Not a job description, or the GET route's 400 for it"),
                **_AUTH_ERRORS,
                "404": _error("Unknown model or server, or jobs are off (`jobs_unavailable`)"),
            },
        },
        "get": {
            "summary": "Recent jobs, newest first (HTML progress view for Accept: text/html)",
            "operationId": "list_jobs",
            "parameters": [
                {
                    "name": "status",
                    "in": "query",
                    "required": False,
                    "schema": {"enum": [status.value for status in JobStatus]},
                },
                {"name": "model", "in": "query", "required": False, "schema": {"type": "string"}},
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
                },
            ],
            "responses": {
                "200": {
                    "description": "The jobs of models the caller may use",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["jobs"],
                                "properties": {
                                    "jobs": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Job"},
                                    }
                                },
                            }
                        },
                        "text/html": {"schema": {"type": "string"}},
                    },
                },
                "400": _error("A bad ?status= or ?limit="),
                "401": _AUTH_ERRORS["401"],
                "404": _error("Jobs are off (`jobs_unavailable`)"),
            },
        },
    },
    "/jobs/{job_id}": {
        "get": {
            "summary": "A job: status, progress, times, error",
            "operationId": "get_job",
            "parameters": [_JOB_ID],
            "responses": {
                "200": {"description": "The job", **_JOB_ANSWER},
                **_AUTH_ERRORS,
                **_JOB_OR_404,
            },
        },
        "delete": {
            "summary": "Cancel a job: its PACS retrieval and model upload stop",
            "operationId": "cancel_job",
            "parameters": [_JOB_ID],
            "responses": {
                "200": {"description": "The job, cancelled (or as it ended)", **_JOB_ANSWER},
                **_AUTH_ERRORS,
                **_JOB_OR_404,
            },
        },
    },
    "/jobs/{job_id}/result": {
        "get": {
            "summary": "The result: the bytes and ETag the GET route gives",
            "operationId": "job_result",
            "parameters": [
                _JOB_ID,
                {
                    "name": "If-None-Match",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                },
            ],
            "responses": {
                "200": {
                    "description": "The model's result, compressed as Accept-Encoding allows",
                    "headers": {"ETag": {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "304": {"description": "The result named by If-None-Match is still valid"},
                **_AUTH_ERRORS,
                **_JOB_OR_404,
                "409": _error("Not finished (`job_not_finished`), or failed or cancelled"),
                "410": _error("The result was evicted from the result cache (`result_gone`)"),
            },
        },
    },
    "/jobs/{job_id}/events": {
        "get": {
            "summary": "Server-Sent Events: `progress` while it runs, then `status`",
            "operationId": "job_events",
            "parameters": [_JOB_ID],
            "responses": {
                "200": {
                    "description": "`event: progress` with {id, status, progress} on each"
                    " change, then `event: status` with the whole job; the stream then ends",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **_AUTH_ERRORS,
                **_JOB_OR_404,
            },
        },
    },
}
