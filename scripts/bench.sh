#!/usr/bin/env bash
# Runs the streaming benchmark (benchmarks/run.py, docs/performance.md): sets up .venv
# with the bench extra when needed (Orthanc must be installed: scripts/test.sh does it),
# then starts Orthanc, a sink model and the proxy on loopback and prints the report;
# then the link-limited benchmark (benchmarks/link.py: the model behind a 1 and a
# 10 Gbit/s link in a network namespace of its own; it needs root and says so when it
# cannot make one). Extra arguments go to the streaming benchmark:
#   scripts/bench.sh --runs 5 --skip-naive
#   scripts/bench.sh --link-only --runs 3     # only the link-limited one, with its options
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
install=false
.venv/bin/python -c 'import model_proxy, dicomweb_client, requests' 2>/dev/null || install=true
# The compiled encoder (setup.py, models/_compact.c): built when a C compiler can build it.
if command -v cc >/dev/null 2>&1 &&
  ! .venv/bin/python -c 'import model_proxy.models._compact' 2>/dev/null; then
  install=true
fi
if $install; then
  .venv/bin/python -m pip install -e '.[test,bench]'
fi
if [ "${1:-}" = "--link-only" ]; then
  shift
  exec .venv/bin/python -m benchmarks.link "$@"
fi
.venv/bin/python -m benchmarks.run "$@"
exec .venv/bin/python -m benchmarks.link
