#!/usr/bin/env bash
# One-time set-up: a virtual environment in .venv with this project and its test extras, at the exact
# versions CI uses (constraints.txt), and Debian's chromium, in which the tests open the scan's HTML report.
# Re-running it is cheap: pip skips what is already installed, apt runs only when chromium is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 \
      || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends chromium >/dev/null; } \
      || echo "setup: could not install Debian's chromium; the report tests will fail until it is installed" >&2
  else
    echo "setup: chromium is missing; install Debian's chromium package (the report tests open HTML in it)" >&2
  fi
fi
