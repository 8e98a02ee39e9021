"""Benchmarks (docs/performance.md). They start their servers with the integration
tests' harness, which is not a package: its folder goes on sys.path here, before any
benchmark module imports it."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))
