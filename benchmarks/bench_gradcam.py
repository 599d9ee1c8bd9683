"""Grad-CAM cost against plain inference, side by side in one run.

The same ResNet-50 (random weights) and batch, timed as: plain ONNX Runtime inference; this project's
Grad-CAM at the default layer and at ``layer3``; pytorch-grad-cam's ``GradCAM`` (and plain torch inference
for reference). Runs are interleaved round-robin so machine noise hits every row alike, and no runtime
spins its threads between calls (ONNX Runtime's allow_spinning=0, OMP_WAIT_POLICY=PASSIVE for torch) so one
row's idle threads do not slow the next. The table gives medians and ratios to ONNX Runtime inference.
Peak memory is measured per row in a fresh subprocess: the peak RSS (VmHWM, reset after set-up) minus
the RSS once the libraries are imported and the inputs made.

    python benchmarks/bench_gradcam.py [--batch 8] [--repeats 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROWS = ["ort-inference", "gradcam-default", "gradcam-layer3", "torch-inference", "pytorch-grad-cam"]


def _model_and_images(batch: int):
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    return model, torch.randn(batch, 3, 224, 224)


def _export(path: str, batch: int) -> None:
    from converters.pytorch import export

    model, images = _model_and_images(batch)
    export(model, images, path)


def _session_options():
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _runner(row: str, path: str, batch: int, model=None, images=None):
    """A zero-argument callable doing one batch of ``row``'s work (set-up excluded)."""
    if row.startswith(("ort-", "gradcam-")):
        import numpy as np

        array = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        if row == "ort-inference":
            from onnx_gradcam.runtime import make_session

            session = make_session(path, "CPUExecutionProvider", _session_options())
            name = session.get_inputs()[0].name
            return lambda: session.run(None, {name: array})
        from onnx_gradcam import Explainer

        explainer = Explainer(path, layer="auto" if row == "gradcam-default" else "layer3",
                              providers="CPUExecutionProvider", session_options=_session_options)
        return lambda: explainer(array)
    import torch

    if model is None:
        model, images = _model_and_images(batch)

    if row == "torch-inference":
        def infer():
            with torch.no_grad():
                model(images)
        return infer
    from pytorch_grad_cam import GradCAM

    peer = GradCAM(model=model, target_layers=[model.layer4])
    return lambda: peer(input_tensor=images, targets=None)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory(row: str, path: str, batch: int) -> None:
    """Subprocess body: print the peak RSS growth caused by building and running ``row``."""
    if row.startswith(("ort-", "gradcam-")):
        import onnxruntime  # noqa: F401  (imports are baseline, not the row's memory)

        import onnx_gradcam  # noqa: F401
        model = images = None
    else:
        model, images = _model_and_images(batch)  # the torch model's weights are baseline too
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
    before = _status_mb("VmRSS")
    run = _runner(row, path, batch, model, images)
    for _ in range(3):
        run()
    print(json.dumps({"row": row, "peak_mb": _status_mb("VmHWM") - before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--memory-row", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_row:
        measure_memory(args.memory_row, args.model, args.batch)
        return

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    workdir = tempfile.mkdtemp(prefix="bench-gradcam-")
    path = os.path.join(workdir, "resnet50.onnx")
    _export(path, args.batch)
    runners = {row: _runner(row, path, args.batch) for row in ROWS}
    for run in runners.values():  # warm-up: sessions, arenas, lazy builds
        run()
    times: dict[str, list[float]] = {row: [] for row in ROWS}
    for _ in range(args.repeats):
        for row, run in runners.items():
            start = time.perf_counter()
            run()
            times[row].append(time.perf_counter() - start)

    memory = {}
    for row in ROWS:
        out = subprocess.run([sys.executable, __file__, "--memory-row", row, "--model", path,
                              "--batch", str(args.batch)], capture_output=True, text=True, check=True)
        memory[row] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]

    base_time = statistics.median(times["ort-inference"])
    base_memory = memory["ort-inference"]
    print(f"ResNet-50, random weights, batch {args.batch}, 224x224, {os.cpu_count()} CPU threads, "
          f"{args.repeats} interleaved repeats")
    print(f"{'row':<20}{'median ms':>12}{'x ORT inf.':>12}{'peak MB':>10}{'x ORT inf.':>12}")
    for row in ROWS:
        median = statistics.median(times[row])
        print(f"{row:<20}{median * 1000:>12.1f}{median / base_time:>12.2f}{memory[row]:>10.0f}"
              f"{memory[row] / base_memory:>12.2f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
