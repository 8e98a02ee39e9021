"""``/openapi.json``: an OpenAPI 3.1 description of the routes.

Written by hand from the same constants the request checks use (UID grammar,
data-filter limits, URL limit), so that it cannot drift from them silently; the
test suite fuzzes the running proxy with it (schemathesis) and checks every
answer against it.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from model_proxy import __version__
from model_proxy.config import Task
from model_proxy.errors import ErrorCode
from model_proxy.routes import openapi_jobs
from model_proxy.routes.params import MAX_FILTERS, UID_MAX_LENGTH, UID_PATTERN
from model_proxy.web.http_limits import MAX_URL_BYTES

_UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"

_ERRORS = {
    "400": "Malformed request: a UID, the data-filters, the task or level for this model, or"
    " bytes that are not HTTP (`invalid_http`)",
    "401": "Client authentication is configured and the request carries no valid credentials",
    "403": "The caller may not use this model (`You have no access to this model`) or the"
    " server it names or defaults to (`no_server_access`)",
    "404": "Unknown route, model or server, or a study/series/instance the PACS does not have",
    "405": "Another method than GET",
    "406": "`Accept: application/dicom` for a result that makes several DICOM objects",
    "414": f"The URL is longer than {MAX_URL_BYTES} bytes",
    "431": "Request headers over the limits",
    "502": "The PACS or the model failed; the message names which (`PACS 1a2b3c4d…`)",
    "503": "The PACS or model is failing repeatedly (circuit breaker open) or the proxy is"
    " at capacity; retry after `Retry-After` seconds",
    "504": "The PACS or the model stayed silent longer than its idle timeout",
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _uid(name: str, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": f"The {what} (DICOM UID: digits and dots, no leading zeros)",
        "schema": {"type": "string", "pattern": f"^{UID_PATTERN}$", "maxLength": UID_MAX_LENGTH},
    }


_FAMILY = {
    "name": "family",
    "in": "path",
    "required": True,
    "description": "The route family; it must match the model's task",
    "schema": {"type": "string", "enum": [task.route_family for task in Task]},
}
_MODEL = {
    "name": "model",
    "in": "path",
    "required": True,
    "description": "The key of the model in models.json",
    "schema": {"type": "string", "pattern": _UUID},
}
_SERVER = {
    "name": "server",
    "in": "query",
    "required": False,
    "description": "The key of a PACS in servers.json; the default server without it",
    "schema": {"type": "string", "pattern": _UUID},
}
_DATA_FILTERS = {
    "name": "data-filters",
    "in": "query",
    "required": False,
    "description": "The DICOM UIDs behind the model's named inputs (its dataFilter entries),"
    " as URL-encoded JSON or in bracket notation"
    " (`data-filters[0][dataKey]=series-one&data-filters[0][uuid]=1.2.3`); or, for inputs"
    " without nested instances, a map from dataKey to UID"
    ' (`data-filters[series-one]=1.2.3` or `{"series-one": "1.2.3"}`). Required by a'
    " model that declares inputs, refused by one that does not.",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DataFilters"}}},
}
_STORE = {
    "name": "store",
    "in": "query",
    "required": False,
    "description": "true: also store the result in the PACS as DICOM (SEG or SR) with STOW-RS,"
    " or into a local folder; the stored SOP Instance UIDs come back in `DICOM-Stored`"
    " (docs/dicom-outputs.md). With `Prefer: respond-async` the job stores, and lists"
    " them in its `stored` (docs/jobs.md)",
    "schema": {"type": "string", "enum": ["true", "false"]},
}


_IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "The ETag of a result the caller holds (with the result cache on)",
    "schema": {"type": "string"},
}


_PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "`respond-async` (RFC 7240): answer 202 with a job instead of waiting",
    "schema": {"type": "string"},
}


def _inference(level: str, path_params: list[dict[str, Any]], filters: bool) -> dict[str, Any]:
    query = [_SERVER, _DATA_FILTERS, _STORE] if filters else [_SERVER, _STORE]
    return {
        "get": {
            "summary": f"Run a model on a {level}",
            "operationId": f"infer_{level}",
            "description": "Fetches the DICOM data from the PACS, streams it to the model and"
            " returns the model's JSON result, nested by study, series and instance UID."
            ' With `Accept: multipart/related; type="application/dicom"` (or'
            " `application/dicom` for a single object) the result comes as DICOM SEG or SR"
            " objects instead.",
            "parameters": [_FAMILY, _MODEL, *path_params, *query, _IF_NONE_MATCH, _PREFER],
            "responses": {
                "200": {
                    "description": "The model's result, compressed as Accept-Encoding allows",
                    "headers": {
                        "ETag": {
                            "description": "With the result cache on",
                            "schema": {"type": "string"},
                        },
                        "DICOM-Stored": {
                            "description": "With ?store=true or a model that stores: the"
                            " SOP Instance UIDs stored, comma-separated",
                            "schema": {"type": "string"},
                        },
                    },
                    "content": {
                        "application/json": {"schema": {"type": "object"}},
                        "multipart/related": {"schema": {"type": "string", "format": "binary"}},
                        "application/dicom": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                "202": openapi_jobs.ACCEPTED,
                "204": {"description": "DICOM asked for, and the result holds nothing to convert"},
                "304": {"description": "The result named by If-None-Match is still valid"},
                **{status: _error(text) for status, text in _ERRORS.items()},
            },
        }
    }


_STUDY = _uid("study", "StudyInstanceUID")
_SERIES = _uid("series", "SeriesInstanceUID")
_INSTANCE = _uid("instance", "SOPInstanceUID")
_ROOT = "/{family}/{model}/studies/{study}"

_FILTER_ENTRY: dict[str, Any] = {
    "type": "object",
    "required": ["dataKey", "uuid"],
    "additionalProperties": False,
    "properties": {
        "dataKey": {"type": "string", "minLength": 1},
        "uuid": {"type": "string", "pattern": f"^{UID_PATTERN}$", "maxLength": UID_MAX_LENGTH},
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "model-proxy",
        "version": __version__,
        "description": "Runs AI models on DICOMweb imaging data; a drop-in zhiva model proxy."
        " Every error is JSON {message, code}.",
    },
    "paths": {
        _ROOT: _inference("study", [_STUDY], filters=True),
        f"{_ROOT}/series/{{series}}": _inference("series", [_STUDY, _SERIES], filters=True),
        f"{_ROOT}/series/{{series}}/instances/{{instance}}": _inference(
            "instance", [_STUDY, _SERIES, _INSTANCE], filters=False
        ),
        "/health": {
            "get": {
                "summary": "Liveness",
                "operationId": "health",
                "responses": {
                    "200": {
                        "description": "The proxy runs",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["status", "version"],
                                    "properties": {
                                        "status": {"const": "ok"},
                                        "version": {"type": "string"},
                                    },
                                }
                            }
                        },
                    }
                },
            }
        },
        "/status": {
            "get": {
                "summary": "Every PACS and model, probed (only with ZHIVA_SHOW_STATUS_PAGE=true)",
                "operationId": "status",
                "parameters": [
                    {
                        "name": "refresh",
                        "in": "query",
                        "required": False,
                        "description": "The HTML page reloads itself every N seconds"
                        " (0: never; default 15)",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 3600},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "HTML for a browser; JSON with Accept: application/json",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["servers", "models"],
                                    "properties": {
                                        "servers": {"type": "object"},
                                        "models": {"type": "object"},
                                    },
                                }
                            },
                            "text/html": {"schema": {"type": "string"}},
                        },
                    },
                    "400": _error("?refresh= is not a whole number of seconds, 0 to 3600"),
                    "401": _error(
                        "access.json is in force and the request has no valid credentials"
                    ),
                    "403": _error(
                        "access.json's monitoring rule does not list the caller"
                        " (`no_monitoring_access`)"
                    ),
                    "404": _error("The status page is turned off"),
                },
            }
        },
        **openapi_jobs.PATHS,
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    },
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["message", "code"],
                "additionalProperties": False,
                "properties": {
                    "message": {"type": "string", "description": "For a person"},
                    "code": {
                        "type": "string",
                        "description": "Stable, for a program",
                        "enum": [code.value for code in ErrorCode],
                    },
                },
            },
            **openapi_jobs.SCHEMAS,
            "DataFilters": {
                "type": "array",
                "maxItems": MAX_FILTERS,
                "description": "At study level: series inputs, each with optional instance"
                " inputs in dataFilter; at series level: instance inputs",
                "items": {
                    **_FILTER_ENTRY,
                    "properties": {
                        **_FILTER_ENTRY["properties"],
                        "dataFilter": {
                            "type": "array",
                            "maxItems": MAX_FILTERS,
                            "items": _FILTER_ENTRY,
                        },
                    },
                },
            },
        }
    },
}


async def openapi(request: Request) -> Response:
    return JSONResponse(DOCUMENT)


routes = [Route("/openapi.json", openapi, methods=["GET"])]
