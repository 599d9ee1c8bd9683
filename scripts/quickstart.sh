#!/usr/bin/env bash
# Set up (if needed), then the main job: train a small CNN on synthetic shapes, export it to ONNX, and
# write Grad-CAM overlays of held-out images to out/quickstart/ (computed on ONNX Runtime).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/quickstart.py --out out/quickstart "$@"
