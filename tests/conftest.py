"""Settings shared by every tier of the tests (unit, app, integration)."""

from __future__ import annotations

from pathlib import Path

import pytest

INTEGRATION_DIR = Path(__file__).parent / "integration"
# Each of these runs for half a minute or more (the soak, the 1,000-fault leak check,
# schemathesis fuzzing): `-m "not slow"` leaves them out of the fast loop.
SLOW_FILES = {"test_soak.py", "test_leaks.py", "test_openapi_fuzz.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under tests/integration talks to real servers in subprocesses:
    # `-m "not integration and not slow"` is the fast tier (unit and in-process app tests).
    for item in items:
        if item.path.is_relative_to(INTEGRATION_DIR):
            item.add_marker(pytest.mark.integration)
        if item.path.name in SLOW_FILES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def anyio_backend() -> str:
    """Async tests run on asyncio only (uvicorn and the proxy use asyncio)."""
    return "asyncio"
