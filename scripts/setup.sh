#!/usr/bin/env bash
# One-time set-up: a virtual environment in .venv with this project and its test extras, at the exact
# versions CI uses (constraints.txt). Re-running it is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
