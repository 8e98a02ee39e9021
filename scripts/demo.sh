#!/usr/bin/env bash
# First run: creates .venv, installs model-proxy, then runs `model-proxy demo`, which
# generates sample data, configs and a certificate and starts the example model and
# the proxy on https://localhost:8002. Arguments go to `model-proxy demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=""
for candidate in python3 python3.13 python3.12 python3.11; do
  if command -v "$candidate" >/dev/null 2>&1 &&
    "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    python=$candidate
    break
  fi
done
if [ ! -x .venv/bin/python ]; then
  if [ -z "$python" ]; then
    echo "model-proxy needs Python 3.11 or newer (python3, python3-venv)" >&2
    exit 1
  fi
  echo "creating .venv with $("$python" --version)"
  "$python" -m venv .venv
fi
if [ ! -x .venv/bin/model-proxy ]; then
  echo "installing model-proxy into .venv"
  .venv/bin/python -m pip install --quiet -e .
fi
exec .venv/bin/model-proxy demo "$@"
