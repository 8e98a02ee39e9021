#!/usr/bin/env bash
# Refreshes docs/images/status-desktop.png and status-phone.png: runs the status page's
# headless-Chromium test (real Orthanc, example model, proxy), which copies its
# screenshots to $STATUS_SCREENSHOT_DIR. Needs .venv (./scripts/test.sh --fast makes it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p docs/images
STATUS_SCREENSHOT_DIR="$PWD/docs/images" PYTHONPATH="$PWD/src" \
  .venv/bin/pytest -q -p no:cacheprovider \
  tests/integration/test_status_page.py -k chromium "$@"
