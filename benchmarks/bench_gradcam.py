"""CAM cost against plain inference, side by side in one run.

The same ResNet-50 (random weights) and batch, timed as: plain ONNX Runtime inference; this project's
Grad-CAM at the default layer, at ``layer3`` and at every candidate layer in one pass (``layer="all"``, 119 maps) and
Grad-CAM++; pytorch-grad-cam's ``GradCAM`` and
``GradCAMPlusPlus`` (and plain torch inference for reference). A second table times the perturbation
methods, Score-CAM and Ablation-CAM, against pytorch-grad-cam's, with the same batch of perturbed inputs
per run (32) and a smaller image batch (each image costs 2048 perturbed runs at layer4). Runs are interleaved
round-robin so machine noise hits every row alike, and no runtime
spins its threads between calls (ONNX Runtime's allow_spinning=0, OMP_WAIT_POLICY=PASSIVE for torch) so one
row's idle threads do not slow the next. The table gives medians and ratios to ONNX Runtime inference.
Peak memory is measured per row in a fresh subprocess: the peak RSS (VmHWM, reset after set-up) minus
the RSS once the libraries are imported and the inputs made; the median of three such processes.

    python benchmarks/bench_gradcam.py [--batch 8] [--repeats 20] [--perturbation-batch 1] [--rows a,b,...]
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

ROWS = ["ort-inference", "gradcam-default", "gradcam-layer3", "gradcam-all-layers", "gradcam++", "torch-inference",
        "pytorch-grad-cam", "pytorch-gradcam++"]
PERTURBATION_ROWS = ["ort-inference", "scorecam", "pytorch-scorecam", "ablationcam", "pytorch-ablationcam"]
OURS = {"gradcam-default": ("gradcam", "auto"), "gradcam-layer3": ("gradcam", "layer3"),
        "gradcam-all-layers": ("gradcam", "all"),
        "gradcam++": ("gradcam++", "auto"), "scorecam": ("scorecam", "auto"), "ablationcam": ("ablationcam", "auto")}
PEERS = {"pytorch-grad-cam": "GradCAM", "pytorch-gradcam++": "GradCAMPlusPlus", "pytorch-scorecam": "ScoreCAM",
         "pytorch-ablationcam": "AblationCAM"}
PERTURBED_PER_RUN = 32
MEMORY_RUNS = 3
"""Peak memory varies by tens of MB from one fresh process to the next: each row's is a median of three."""


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
    if row == "ort-inference" or row in OURS:
        import numpy as np

        array = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        if row == "ort-inference":
            from onnx_gradcam.runtime import make_session

            session = make_session(path, "CPUExecutionProvider", _session_options())
            name = session.get_inputs()[0].name
            return lambda: session.run(None, {name: array})
        from onnx_gradcam import Explainer

        method, layer = OURS[row]
        explainer = Explainer(path, layer=layer, method=method, providers="CPUExecutionProvider",
                              session_options=_session_options, perturbations_per_run=PERTURBED_PER_RUN)
        return lambda: explainer(array)
    import torch

    if model is None:
        model, images = _model_and_images(batch)

    if row == "torch-inference":
        def infer():
            with torch.no_grad():
                model(images)
        return infer
    import pytorch_grad_cam

    peer = getattr(pytorch_grad_cam, PEERS[row])(model=model, target_layers=[model.layer4])
    peer.batch_size = PERTURBED_PER_RUN
    return lambda: peer(input_tensor=images, targets=None)


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory(row: str, path: str, batch: int) -> None:
    """Subprocess body: print the peak RSS growth caused by building and running ``row``."""
    if row == "ort-inference" or row in OURS:
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
    parser.add_argument("--perturbation-batch", type=int, default=1)
    parser.add_argument("--perturbation-repeats", type=int, default=1)
    parser.add_argument("--rows", help="only these rows (comma-separated; ort-inference, the baseline, is always "
                        "run); the perturbation table runs when one of its rows is named")
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
    rows, perturbation_rows = (_chosen(table, args.rows) for table in (ROWS, PERTURBATION_ROWS))
    times = _interleaved(rows, path, args.batch, args.repeats)
    memory = {row: statistics.median(_peak_mb(row, path, args.batch) for _ in range(MEMORY_RUNS)) for row in rows}

    base_time = statistics.median(times["ort-inference"])
    base_memory = memory["ort-inference"]
    print(f"ResNet-50, random weights, batch {args.batch}, 224x224, {os.cpu_count()} CPU threads, "
          f"{args.repeats} interleaved repeats")
    print(f"{'row':<22}{'median ms':>12}{'x ORT inf.':>12}{'peak MB':>10}{'x ORT inf.':>12}")
    for row in rows:
        median = statistics.median(times[row])
        print(f"{row:<22}{median * 1000:>12.1f}{median / base_time:>12.2f}{memory[row]:>10.0f}"
              f"{memory[row] / base_memory:>12.2f}")
    if len(perturbation_rows) > 1:
        _perturbation_table(path, args, perturbation_rows)


def _chosen(table: list[str], rows) -> list[str]:
    """The rows of ``table`` asked for (all without ``--rows``), the baseline first."""
    if rows is None:
        return table
    wanted = set(rows.split(","))
    unknown = wanted - set(ROWS) - set(PERTURBATION_ROWS)
    if unknown:
        raise SystemExit(f"unknown rows {sorted(unknown)}; known: {ROWS + PERTURBATION_ROWS[1:]}")
    return [row for row in table if row == "ort-inference" or row in wanted]


def _perturbation_table(path: str, args, rows: list[str]) -> None:
    batch = args.perturbation_batch
    # Each call here takes tens of seconds: set-up (a session or two) is lost in it, so no warm-up call.
    times = _interleaved(rows, path, batch, args.perturbation_repeats, warm_up=False)
    base_time = statistics.median(times["ort-inference"])
    print(f"\nPerturbation methods at layer4 (2048 channels): batch {batch}, {PERTURBED_PER_RUN} perturbed inputs "
          f"per run, {args.perturbation_repeats} interleaved repeats")
    print(f"{'row':<22}{'median s':>12}{'x ORT inf.':>12}")
    for row in rows:
        median = statistics.median(times[row])
        print(f"{row:<22}{median:>12.2f}{median / base_time:>12.1f}")


def _peak_mb(row: str, path: str, batch: int) -> float:
    out = subprocess.run([sys.executable, __file__, "--memory-row", row, "--model", path, "--batch", str(batch)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def _interleaved(rows: list[str], path: str, batch: int, repeats: int, warm_up: bool = True
                 ) -> dict[str, list[float]]:
    """Seconds per call of each row, the rows run round-robin (after one warm-up call each)."""
    runners = {row: _runner(row, path, batch) for row in rows}
    for run in runners.values() if warm_up else ():  # sessions, arenas, lazy builds
        run()
    times: dict[str, list[float]] = {row: [] for row in rows}
    for _ in range(repeats):
        for row, run in runners.items():
            start = time.perf_counter()
            run()
            times[row].append(time.perf_counter() - start)
    return times


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
