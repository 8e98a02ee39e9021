"""/status JSON carries exactly the fields docs/compatibility.md lists (issue 16, item 14):
a field added to the code without the docs, or documented and gone, fails here."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from app_proxy import Deployment

pytestmark = pytest.mark.anyio

DOC = Path(__file__).parents[2] / "docs" / "compatibility.md"
_ROW = re.compile(r"^\| (?P<where>[a-z, ]+) \| (?P<fields>`[^|]*) \| ", re.MULTILINE)


def documented_fields() -> dict[str, set[str]]:
    """{"server": {...}, "model": {...}, "process": {...}} from the /status table."""
    section = DOC.read_text().split("## /status", 1)[1].split("\n## ", 1)[0]
    found: dict[str, set[str]] = {
        where: set()
        for where in (
            "server",
            "model",
            "process",
            "jobs",
            "capacity",
            "cache",
            "watcher",
            "watcher server",
        )
    }
    for row in _ROW.finditer(section):
        names = set(re.findall(r"`([A-Za-z0-9]+)`", row.group("fields")))
        for where in row.group("where").split(", "):
            found[where.strip()] |= names
    return found


def fields_of(entries: dict[str, Any]) -> set[str]:
    return {name for entry in entries.values() for name in entry}


async def test_status_fields_are_documented(deployment: Deployment, tmp_path: Path) -> None:
    async with deployment.proxy(tmp_path) as proxy:
        response = await proxy.client.get("/status", headers={"Accept": "application/json"})
    assert response.status_code == 200
    report = response.json()
    always_there = {"servers", "models", "process", "capacity", "cache"}
    assert always_there <= set(report) <= always_there | {"jobs", "watcher"}
    documented = documented_fields()
    # Every field the proxy sent is documented (optional ones may be absent here).
    assert fields_of(report["servers"]) <= documented["server"]
    assert fields_of(report["models"]) <= documented["model"]
    assert set(report["process"]) == documented["process"]
    if "jobs" in report:
        # "error" only while the shared queue's Redis does not answer.
        assert set(report["jobs"]) == documented["jobs"] - {"error"}
    if "watcher" in report:
        assert set(report["watcher"]) == documented["watcher"]
        assert fields_of(report["watcher"]["servers"]) <= documented["watcher server"]
    assert set(report["capacity"]) == documented["capacity"]
    assert set(report["cache"]) == documented["cache"]
    always = {"ok", "latencyMs", "statusUri", "detail", "name"}
    assert always | {"uri", "isDefault"} <= fields_of(report["servers"])
    assert always | {"task", "supports", "breaker", "traffic"} <= fields_of(report["models"])
