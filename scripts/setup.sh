#!/usr/bin/env bash
# Set up a virtual environment with spacy-distill and everything the project,
# the tests and the server need.
#   bash scripts/setup.sh [VENV_DIR]      (default: .venv)
# torch is installed first, pinned to the CPU build: a bare `torch` requirement
# would pull a multi-GB CUDA build. Debian's chromium (for the demo-page browser
# test) is installed when apt-get is available and we are root; without it
# that one test is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PY="${PYTHON:-python3}"

"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.0"
"$VENV/bin/python" -m pip install -q -e ".[all,dev]"

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 && ! command -v chromium >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "setup: could not install chromium; the browser test will be skipped" >&2
fi
echo "setup: ready — activate with: . $VENV/bin/activate"
