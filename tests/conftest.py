"""Settings shared by the unit and the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/integration talks to real servers: `-m "not integration"`
    # gives the fast unit run without Orthanc.
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio only (uvicorn and the proxy use asyncio)."""
    return "asyncio"
