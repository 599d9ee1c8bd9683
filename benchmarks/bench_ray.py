"""Bulk explanation on Ray Data against the single-process Explainer loop, on the same image files.

ResNet-50 (random weights, exported by converters.pytorch) explains ``--images`` random PNG files of 224x224
with Grad-CAM at its default layer, as: the single-process loop (decode, preprocess, explain in batches, ONNX
Runtime on every core); :func:`onnx_gradcam.bulk.explain_dataset` with 1 actor holding every core, 2 actors
of half the cores each, and 1 actor of half the cores (to show what one actor's share does alone). Every row
is a whole run, start to end: the Explainer's construction (in each actor for Ray, in parallel), reading and
decoding the files, explaining; Ray writes its maps and summary too, the loop keeps them in memory. Ray
itself is started once, before the rows (its start-up is not in any row). Each Ray row also runs on one
batch of images alone, its fixed cost (actors started, sessions made, files listed): "after start-up" is the
rate of the other images, (images - batch) / (seconds - fixed seconds). One run, rows one after another:

    python benchmarks/bench_ray.py [--images 256] [--batch 16] [--model resnet50|resnet18]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

import numpy as np
from PIL import Image

SIZE = 224


def _export(name: str, path: str) -> None:
    import torch
    import torchvision

    from converters.pytorch import export

    torch.manual_seed(0)
    export(getattr(torchvision.models, name)(weights=None).eval(), torch.randn(1, 3, SIZE, SIZE), path)


def _images(folder: str, count: int) -> None:
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for index in range(count):
        encoded = io.BytesIO()
        Image.fromarray((rng.random((SIZE, SIZE, 3)) * 255).astype(np.uint8)).save(encoded, format="PNG")
        with open(os.path.join(folder, f"{index:04d}.png"), "wb") as handle:
            handle.write(encoded.getvalue())


def single_process(model: str, folder: str, batch: int) -> tuple[float, float]:
    """Seconds for the plain loop over the folder, and of those the Explainer's construction."""
    from onnx_gradcam import Explainer
    from onnx_gradcam.files import find_images, preprocessing_for
    from onnx_gradcam.images import load_picture

    started = time.perf_counter()
    explainer = Explainer(model)
    built = time.perf_counter() - started
    preprocessing = preprocessing_for(explainer)
    paths = find_images([folder])
    for start in range(0, len(paths), batch):
        explainer(np.stack([preprocessing(load_picture(path)) for path in paths[start:start + batch]]))
    return time.perf_counter() - started, built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--model", default="resnet50", choices=["resnet50", "resnet18"])
    args = parser.parse_args()
    import ray

    from onnx_gradcam.bulk import explain_dataset

    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as work:
        model, folder, one_batch = (os.path.join(work, name) for name in (f"{args.model}.onnx", "images", "batch"))
        _export(args.model, model)
        _images(folder, args.images)
        _images(one_batch, args.batch)
        ray.init(num_cpus=cores, include_dashboard=False, logging_level="warning")
        seconds, built = single_process(model, folder, args.batch)
        rows = [(f"single-process Explainer loop, {cores} threads", seconds, None)]
        for actors, cpus in ((1, cores), (2, cores // 2), (1, cores // 2)):
            runs = [explain_dataset(images, model, os.path.join(work, f"out-{actors}x{cpus}-{count}"), actors=actors,
                                    num_cpus=cpus, batch_size=args.batch)
                    for images, count in ((one_batch, args.batch), (folder, args.images))]
            assert [run.explained for run in runs] == [args.batch, args.images], runs
            rows.append((f"Ray Data, {actors} actor(s) x {cpus} CPU(s)", runs[1].seconds, runs[0].seconds))
        ray.shutdown()
    print(f"\n{args.model}, {args.images} images of {SIZE}x{SIZE}, batches of {args.batch}, {cores} cores; "
          f"the Explainer's construction: {built:.1f} s (in every row)\n")
    print("| run | seconds | images/s | fixed seconds (one batch) | images/s after start-up |")
    print("|---|---:|---:|---:|---:|")
    for label, seconds, fixed in rows:
        after = "" if fixed is None else f"{(args.images - args.batch) / (seconds - fixed):.2f}"
        print(f"| {label} | {seconds:.1f} | {args.images / seconds:.2f} | {'' if fixed is None else f'{fixed:.1f}'} "
              f"| {after} |")


if __name__ == "__main__":
    main()
