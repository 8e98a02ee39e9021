#!/usr/bin/env bash
# Runs the streaming benchmark (benchmarks/run.py, docs/performance.md): sets up .venv
# with the bench extra when needed (Orthanc must be installed: scripts/test.sh does it),
# then starts Orthanc, a sink model and the proxy on loopback and prints the report.
# Extra arguments go to the benchmark: scripts/bench.sh --runs 5 --skip-naive
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import model_proxy, dicomweb_client, requests' 2>/dev/null; then
  .venv/bin/python -m pip install -e '.[test,bench]'
fi
exec .venv/bin/python -m benchmarks.run "$@"
