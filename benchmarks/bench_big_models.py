"""Peak memory of big models: Keras conversion, and explaining against plain inference.

Rows, each measured in fresh subprocesses (the median of ``--runs``), as the peak RSS (VmHWM, reset once the
starting state is built) less the RSS at that point:

- Keras ``VGG16`` (138 M parameters, 528 MB) and ``ResNet152`` converted by ``converters.keras.export``: the peak
  above the built Keras model, and that as a multiple of the weights' size (the target: at most 4x).
- torchvision ``vgg19`` (548 MB), exported once by ``converters.pytorch.export``: Grad-CAM at the default layer
  with ``onnx_gradcam.Explainer`` on one 224x224 image on the CPU, against a plain ``onnxruntime.InferenceSession``
  of the same file running the same image (the target: at most 1.5x). The baseline is the RSS once the libraries
  are imported and the image made.

All weights are random (``weights=None``). One command:

    python benchmarks/bench_big_models.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from bench_gradcam import _status_mb

KERAS_ROWS = ["VGG16", "ResNet152"]
EXPLAIN_ROWS = ["ort-inference", "explainer-gradcam"]
KERAS_TARGET = 4.0
EXPLAIN_TARGET = 1.5


def _reset_peak() -> float:
    """Reset the peak-RSS mark (VmHWM) to the current RSS, which is returned (MB)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    return _status_mb("VmRSS")


def measure_keras(name: str, directory: str) -> dict:
    """Subprocess body: build keras.applications ``name`` and convert it; peak above the built model."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from converters.keras import export

    model = getattr(keras.applications, name)(weights=None)
    weights_mb = sum(w.nbytes for w in model.get_weights()) / 2**20
    before = _reset_peak()
    export(model, os.path.join(directory, f"{name}.onnx"))
    return {"peak_mb": _status_mb("VmHWM") - before, "weights_mb": weights_mb}


def export_vgg19(path: str) -> None:
    """Subprocess body: torchvision vgg19 (random weights, eval) exported with its default layers."""
    import torch
    import torchvision

    from converters.pytorch import export

    torch.manual_seed(0)
    export(torchvision.models.vgg19(weights=None).eval(), torch.randn(1, 3, 224, 224), path)


def measure_explain(row: str, path: str) -> dict:
    """Subprocess body: the peak RSS growth of making ``row``'s session(s) and running one image."""
    import numpy as np
    import onnxruntime as ort

    from onnx_gradcam import Explainer

    image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    before = _reset_peak()
    if row == "ort-inference":
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        session.run(None, {session.get_inputs()[0].name: image})
    else:
        Explainer(path, providers="CPUExecutionProvider")(image)
    return {"peak_mb": _status_mb("VmHWM") - before}


def _in_subprocess(*arguments: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(runs: int, *arguments: str) -> dict:
    """Each field's median over ``runs`` fresh subprocesses."""
    results = [_in_subprocess(*arguments) for _ in range(runs)]
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keras", help=argparse.SUPPRESS)
    parser.add_argument("--export-vgg19", help=argparse.SUPPRESS)
    parser.add_argument("--explain", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--directory", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.keras:
        print(json.dumps(measure_keras(args.keras, args.directory)))
        return
    if args.export_vgg19:
        export_vgg19(args.export_vgg19)
        print(json.dumps({}))
        return
    if args.explain:
        print(json.dumps(measure_explain(*args.explain)))
        return

    directory = tempfile.mkdtemp(prefix="bench-big-models-")
    print(f"{os.cpu_count()} CPU threads, median of {args.runs} fresh processes per row, random weights\n")
    print("| Keras model | weights MB | conversion peak MB above the built model | x weights (target <= 4) |")
    print("|---|---:|---:|---:|")
    for name in KERAS_ROWS:
        result = _median(args.runs, "--keras", name, "--directory", directory)
        print(f"| {name} | {result['weights_mb']:.0f} | {result['peak_mb']:.0f} | "
              f"{result['peak_mb'] / result['weights_mb']:.2f} |", flush=True)

    path = os.path.join(directory, "vgg19.onnx")
    _in_subprocess("--export-vgg19", path)
    memory = {row: _median(args.runs, "--explain", row, path)["peak_mb"] for row in EXPLAIN_ROWS}
    base = memory["ort-inference"]
    print(f"\ntorchvision vgg19 ({os.path.getsize(path) / 2**20:.0f} MB file), batch 1, 224x224, CPU\n")
    print("| row | peak MB | x ORT inference (target <= 1.5 for the explainer) |")
    print("|---|---:|---:|")
    for row in EXPLAIN_ROWS:
        print(f"| {row} | {memory[row]:.0f} | {memory[row] / base:.2f} |")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
