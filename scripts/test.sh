#!/usr/bin/env bash
# Sets up and runs the whole test suite: Orthanc (apt, when root), the virtualenv,
# lint, formatting, type checks, then pytest with branch coverage. Extra arguments go
# to pytest:
#   scripts/test.sh -x -k orthanc
#   scripts/test.sh --fast        # unit and in-process tiers only (no Orthanc, no slow)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fast=false
if [ "${1:-}" = "--fast" ]; then
  fast=true
  shift
fi

section() { printf '\n==== %s ====\n' "$*"; }

orthanc_present() {
  { command -v Orthanc || [ -x /usr/sbin/Orthanc ] || [ -x /usr/bin/Orthanc ]; } >/dev/null 2>&1 &&
    [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]
}

nginx_present() {
  { command -v nginx || [ -x /usr/sbin/nginx ]; } >/dev/null 2>&1
}

find_python() {
  local candidate
  for candidate in python3 python3.13 python3.12 python3.11; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

section "system packages"
missing=()
$fast || orthanc_present || missing+=(orthanc orthanc-dicomweb)
# The reverse-proxy recipe of docs/deployment.md runs against the real nginx.
$fast || nginx_present || missing+=(nginx)
# dciodvfy validates the DICOM results in tests/integration/test_dicom_outputs.py.
$fast || command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
# The /jobs page is tested in headless Chromium (tests/integration/test_jobs_durable.py).
$fast || command -v chromium >/dev/null 2>&1 || missing+=(chromium)
# The state several replicas share is tested against a real Redis (docs/replicas.md).
$fast || command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# systemd-analyze checks the shipped unit (tests/integration/test_deployment_files.py).
$fast || command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
# promtool checks the /metrics exposition and the alert rules (fast tier too); the
# integration tests run a real Prometheus.
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
python=$(find_python || true)
if [ -z "$python" ]; then
  missing+=(python3 python3-venv)
elif [ ! -x .venv/bin/python ] && ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
  missing+=(python3-venv)
fi
# The compiled wire-format encoder (setup.py) wants a C compiler and the Python headers;
# without them the install still works, with a slower encoder (docs/performance.md).
for_encoder=()
command -v cc >/dev/null 2>&1 || for_encoder+=(gcc libc6-dev)
if [ -n "$python" ] && ! "$python" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
  for_encoder+=(python3-dev)
fi
if [ ${#for_encoder[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    missing+=("${for_encoder[@]}")
  else
    echo "note: without ${for_encoder[*]} the compiled encoder is not built (slower JSON bodies)"
  fi
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing: ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  else
    echo "missing system packages: ${missing[*]}" >&2
    echo "install them (Debian/Ubuntu: sudo apt-get install ${missing[*]}) and run again" >&2
    exit 1
  fi
fi
python=${python:-$(find_python)}
orthanc_present && echo "Orthanc and its DICOMweb plugin: present"
nginx_present && echo "nginx: present"
command -v prometheus >/dev/null 2>&1 && echo "Prometheus and promtool: present"
command -v redis-server >/dev/null 2>&1 && echo "Redis: present"
# kubectl renders deploy/kubernetes (tests/integration/test_kubernetes_manifests.py). It
# must bring kustomize v5 (kubectl 1.27 or later): Debian's kubernetes-client is older,
# so it is not apt-installed here.
if command -v kubectl >/dev/null 2>&1; then
  echo "kubectl: present"
elif ! $fast; then
  echo "missing: kubectl 1.27 or later (https://kubernetes.io/docs/tasks/tools/);" \
    "the Kubernetes manifest tests fail without it" >&2
fi

section "virtualenv (.venv)"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# Reinstall only when pyproject.toml or the compiled encoder changed, so that a second
# run works offline.
stamp=.venv/.model-proxy-installed
extras="test,bench"
wanted=$({ cat pyproject.toml setup.py src/model_proxy/models/_compact.c; echo "extras: $extras"; } |
  sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]; then
  .venv/bin/python -m pip install --upgrade pip
  # The bench extra too: the benchmarks are type-checked below.
  .venv/bin/python -m pip install -e ".[$extras]"
  echo "$wanted" >"$stamp"
else
  echo "up to date ($(.venv/bin/python --version))"
fi

section "ruff check"
.venv/bin/ruff check .

section "ruff format --check"
.venv/bin/ruff format --check .

section "mypy (strict)"
.venv/bin/mypy
# tests/ has a conftest.py at several levels and no packages: check each tree alone.
[ -f tests/conftest.py ] && .venv/bin/mypy tests/conftest.py
for dir in tests/*/; do
  case "$dir" in *__pycache__*) continue ;; esac
  if compgen -G "${dir}*.py" >/dev/null; then
    .venv/bin/mypy "$dir"
  fi
done
# The benchmarks import the integration tests' harness.
MYPYPATH=src:tests/integration .venv/bin/mypy benchmarks

section "pytest"
# Branch coverage of the code that runs in the pytest process (pyproject.toml
# [tool.coverage]); the proxies the integration tests start as subprocesses are not
# measured. Exit code 5 (no tests collected) stays a failure on purpose.
coverage=(--cov --cov-report=term)
if $fast; then
  exec .venv/bin/pytest -m "not integration and not slow" "${coverage[@]}" "$@"
fi
exec .venv/bin/pytest "${coverage[@]}" "$@"
