"""Maps of the torchvision exactness models, written by one version of this package and checked by another.

A refactor must not move a map. ``write`` exports the fifteen networks of tests/test_torchvision_exactness.py
(random weights, seed 0) once, explains them with every in-graph method at the default layer and at the
inner layer, and stores the models and the maps; ``check`` explains the same stored models with the code
checked out now and reports the largest difference per network. Run ``write`` at the previous release:

    git worktree add /tmp/previous <ref>
    (cd /tmp/previous && ../main/.venv/bin/python scripts/compare_maps.py write /tmp/maps)
    .venv/bin/python scripts/compare_maps.py check /tmp/maps        # exit status 1 past --tolerance
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

METHODS = ("gradcam", "hirescam", "gradcam-elementwise", "gradcam++", "xgradcam", "layercam")
CLASSES = [3, 817]


def _archs() -> dict[str, tuple[str, str]]:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from test_torchvision_exactness import ARCHS

    return ARCHS


def write(folder: str) -> None:
    import torch  # noqa: F401  (before TensorFlow, see the README)

    archs = _archs()
    from test_torchvision_exactness import _build

    from converters.pytorch import export

    os.makedirs(folder, exist_ok=True)
    for arch, (_, inner) in sorted(archs.items()):
        model, images = _build(arch)
        path = os.path.join(folder, f"{arch}.onnx")
        export(model, images, path, layers=[inner])
        np.save(os.path.join(folder, f"{arch}_images.npy"), images.numpy())
        np.savez(os.path.join(folder, f"{arch}_maps.npz"), **_maps(path, images.numpy(), inner))
        print(arch, "written", flush=True)


def _maps(path: str, images: np.ndarray, inner: str) -> dict[str, np.ndarray]:
    from onnx_gradcam import Explainer

    maps = {}
    for layer in ("auto", inner):
        for method in METHODS:
            result = Explainer(path, layer=layer, method=method, providers="CPUExecutionProvider")(images, CLASSES)
            maps[f"{layer}|{method}"] = result.cams
    return maps


def check(folder: str, tolerance: float) -> int:
    worst = 0.0
    for arch, (_, inner) in sorted(_archs().items()):
        stored = np.load(os.path.join(folder, f"{arch}_maps.npz"))
        images = np.load(os.path.join(folder, f"{arch}_images.npy"))
        now = _maps(os.path.join(folder, f"{arch}.onnx"), images, inner)
        varied = [key for key in stored.files if np.ptp(stored[key], axis=(1, 2)).min() > 0]
        if not varied:  # a constant map equals any other constant map: no evidence
            print(f"{arch}: every stored map is constant; nothing to compare")
            return 1
        differences = {key: float(np.abs(now[key] - stored[key]).max()) for key in stored.files}
        flat = len(stored.files) - len(varied)
        key = max(differences, key=differences.get)
        worst = max(worst, differences[key])
        print(f"{arch:20s} {len(differences)} maps ({flat} constant), max |difference| {differences[key]:.2e} "
              f"({key})", flush=True)
    print(f"all: max |difference| {worst:.2e} (tolerance {tolerance:g})")
    return 0 if worst <= tolerance else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["write", "check"])
    parser.add_argument("folder")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args()
    if args.action == "write":
        write(args.folder)
        return 0
    return check(args.folder, args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
