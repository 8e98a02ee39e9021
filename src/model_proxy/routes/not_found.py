"""What a 404 for an unknown path says: the original's "Not found", then the routes
that exist, so a user who mistyped one sees the right spelling."""

from __future__ import annotations

from model_proxy.config.enums import Task
from model_proxy.errors import NotFound

_ROUTE_FAMILIES = ", ".join(f"/{task.route_family}/" for task in Task)
UNKNOWN_PATH = (
    "Not found. model-proxy serves"
    f" {_ROUTE_FAMILIES} (each followed by {{model}}/studies/{{study}}[/series/{{series}}"
    "[/instances/{instance}]]), /jobs, /health, /status and /openapi.json"
)
STATUS_PAGE_OFF = (
    "Not found: the status page is off; start model-proxy with"
    " ZHIVA_SHOW_STATUS_PAGE=true to turn it on"
)


def unknown_path() -> NotFound:
    return NotFound(UNKNOWN_PATH)
