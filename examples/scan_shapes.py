"""The scan on two synthetic tasks: which layer's maps find what decides the class?

    python examples/scan_shapes.py --out out/scan

- ``shapes``: the quick start's task (circle, square or triangle on clutter); the object's box is the truth.
- ``marks``: a fine-grained variant: a large shape of any class holds a small bar, and only the bar's
  orientation is the class; the bar's box is the truth.

For each task it trains the quick start's CNN (fixed seeds), exports it to ONNX and scans every candidate
layer over held-out images with their boxes, writing the report (table, plot, grid, report.html) to
OUT/TASK/ and printing the ranked table. A few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples.quickstart import build_model, torch_threads, train  # noqa: E402
from examples.shapes import CLASSES, MARKS, make_marked_shapes, make_shapes  # noqa: E402
from onnx_gradcam import scan  # noqa: E402
from onnx_gradcam.scores.faithfulness import FAITHFULNESS  # noqa: E402

TASKS = {"shapes": (make_shapes, CLASSES), "marks": (make_marked_shapes, MARKS)}
TRAIN_SEED, SCAN_SEED = 1, 2


def trained_model(task: str, folder: str, count: int = 4000, epochs: int = 4, threads: int = 2) -> str:
    """Train the quick start's CNN on ``task`` (fixed seeds) and export it to FOLDER/TASK.onnx; its path."""
    import torch

    from converters.pytorch import export

    make, classes = TASKS[task]
    images, labels, _ = make(count, seed=TRAIN_SEED)
    torch.manual_seed(0)
    with torch_threads(threads):
        model = train(build_model(len(classes)), images, labels, epochs)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{task}.onnx")
    export(model, torch.from_numpy(images[:2]), path)
    return path


def scan_task(task: str, model_path: str, count: int, out: str, faithfulness=tuple(FAITHFULNESS), **options):
    """Scan every candidate layer of the model over ``count`` held-out images of ``task``, explaining each
    image's true class, scored against the boxes and by ``faithfulness`` (by default every score, ROAD
    included, which costs most of the time; None: the scan's default set); the report goes to ``out``."""
    make, _ = TASKS[task]
    images, labels, boxes = make(count, seed=SCAN_SEED)
    return scan(model_path, images, ground_truth=boxes, targets=labels, out=out, faithfulness=faithfulness,
                **options)


def print_table(result) -> None:
    names = list(result.directions)
    print(f"{'rank':>4}  {'layer':<12}{'kind':<24}{'depth':>5}{'stride':>7}" + "".join(f"{n[:12]:>13}" for n in names))
    for rank, index in enumerate(result.ranking, start=1):
        row = result.rows[index]
        print(f"{rank:>4}  {row['layer'][:12]:<12}{row['kind'] or '':<24}{row['depth']:>5}{row['stride']:>7g}"
              + "".join(f"{row[n]:>13.3f}" for n in names))
    print(result.recommendation)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/scan")
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--images", type=int, default=100, help="held-out images scanned per task")
    args = parser.parse_args(argv)
    results = {}
    for task in args.tasks:
        started = time.time()
        model_path = trained_model(task, args.out)
        trained = time.time()
        results[task] = scan_task(task, model_path, args.images, os.path.join(args.out, task))
        print(f"\n{task}: trained in {trained - started:.0f} s, scanned in {time.time() - trained:.0f} s")
        print_table(results[task])
    return results


if __name__ == "__main__":
    main()
