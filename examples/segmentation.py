"""Segmentation: train a tiny fully-convolutional net on synthetic scenes, export it to ONNX, and explain each
class over the region the model segmented as that class.

    python examples/segmentation.py --out out/segmentation

The scenes hold one to three shapes on clutter; the net labels every pixel background, circle, square or
triangle. For every class it finds in a held-out image, the target is ``Mask(class, region)``: the class's
score summed over the pixels it gave that class (pytorch-grad-cam's SemanticSegmentationTarget). Writes, per
image, a grid comparing the classes found and an overlay per class, and prints how often a map's peak lies
on the true pixels of its class. Takes about 40 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import NamedTuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples.quickstart import conv_block, peak_inside, torch_threads, train  # noqa: E402
from examples.shapes import CLASSES, make_scenes  # noqa: E402
from onnx_gradcam import Explainer, Mask  # noqa: E402
from onnx_gradcam.pictures import grid, overlay  # noqa: E402

LABELS = ("background",) + CLASSES
LAYER = "encoder"


class Run(NamedTuple):
    """What :func:`main` returns: the quality figure and what it was measured on."""

    quality: float  # fraction of (image, class found) maps whose peak lies on the class's true pixels
    model: object  # the trained torch model
    model_path: str
    images: np.ndarray  # held-out images (N, 3, H, W)
    truth: np.ndarray  # their true class per pixel (N, H, W)
    predicted: np.ndarray  # the ONNX model's class per pixel (N, H, W)
    cams: np.ndarray  # (N, classes, H, W): the map of each class found, zeros elsewhere


def build_model():
    """An encoder down to 1/4 resolution (the explained layer), a decoder to per-pixel class scores at 1/2
    resolution, and a bilinear upsampling of those scores to the image's size."""
    from collections import OrderedDict

    import torch.nn as nn

    def upsample():
        return nn.Upsample(scale_factor=2, mode="bilinear")

    return nn.Sequential(OrderedDict(
        encoder=nn.Sequential(*conv_block(3, 16), nn.MaxPool2d(2), *conv_block(16, 32), nn.MaxPool2d(2),
                              *conv_block(32, 64), *conv_block(64, 64)),
        decoder=nn.Sequential(*conv_block(64, 32), upsample(), *conv_block(32, 16), nn.Conv2d(16, len(LABELS), 1),
                              upsample()),
    ))


def segment(model_path: str, images: np.ndarray) -> np.ndarray:
    """Each pixel's class by the exported model, on ONNX Runtime."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    scores = session.run(["output"], {"input": images})[0]
    return scores.argmax(1)


def explain_classes(explainer: Explainer, images: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(N, classes, H, W) maps: for each class the model found in an image, Mask(class, its region)."""
    cams = np.zeros((len(images), len(LABELS), *images.shape[2:]), np.float32)
    for label in range(1, len(LABELS)):
        found = np.flatnonzero((predicted == label).any(axis=(1, 2)))
        if len(found):
            targets = [Mask(label, predicted[i] == label) for i in found]
            cams[found, label] = explainer(images[found], targets).cams
    return cams


def map_quality(cams: np.ndarray, predicted: np.ndarray, truth: np.ndarray) -> float:
    """Over every (image, class) the model found that is truly there: how often the peak is on its pixels."""
    hits = []
    for label in range(1, len(LABELS)):
        explained = (predicted == label).any(axis=(1, 2)) & (truth == label).any(axis=(1, 2))
        hits.extend(peak_inside(cams[explained, label], truth[explained] == label))
    return float(np.mean(hits))


def mean_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of each shape class, over all held-out pixels, averaged over the classes."""
    return float(np.mean([((predicted == c) & (truth == c)).sum() / max(((predicted == c) | (truth == c)).sum(), 1)
                          for c in range(1, len(LABELS))]))


def write_pictures(folder: str, images: np.ndarray, predicted: np.ndarray, cams: np.ndarray, count: int) -> None:
    """For each of the first ``count`` images: an overlay per class found, and a grid of them beside the image."""
    for i in range(min(count, len(images))):
        picture = images[i].transpose(1, 2, 0)
        found = [label for label in range(1, len(LABELS)) if (predicted[i] == label).any()]
        for label in found:
            overlay(picture, cams[i, label], alpha=0.45).resize((256, 256)).save(
                os.path.join(folder, f"{i:03d}_{LABELS[label]}.png"))
        if found:
            grid(picture, {LABELS[label]: cams[i, label] for label in found}, columns=len(found) + 1,
                 cell=192, alpha=0.45).save(os.path.join(folder, f"{i:03d}_grid.png"))


def main(argv=None) -> Run:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/segmentation", help="folder for the model and the pictures")
    parser.add_argument("--train", type=int, default=2000, help="training scenes")
    parser.add_argument("--test", type=int, default=100, help="held-out scenes to explain")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--pictures", type=int, default=8, help="for how many scenes to write pictures")
    parser.add_argument("--threads", type=int, default=2, help="torch threads while training (fixed: reproducible)")
    args = parser.parse_args(argv)

    import torch

    from converters.pytorch import export

    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    images, masks = make_scenes(args.train, seed=1)
    torch.manual_seed(0)
    with torch_threads(args.threads):
        model = train(build_model(), images, masks, args.epochs)
    model_path = os.path.join(args.out, "shapes_segmenter.onnx")
    export(model, torch.from_numpy(images[:2]), model_path, layers=[LAYER])

    test_images, truth = make_scenes(args.test, seed=2)
    predicted = segment(model_path, test_images)
    explainer = Explainer(model_path, layer=LAYER)
    cams = explain_classes(explainer, test_images, predicted)
    quality = map_quality(cams, predicted, truth)
    write_pictures(args.out, test_images, predicted, cams, args.pictures)
    print(f"layer {explainer.layers[0]}")
    print(f"held-out pixel accuracy {(predicted == truth).mean():.3f}, mean IoU of the shapes "
          f"{mean_iou(predicted, truth):.3f}; peak of the class's map on its true pixels for {quality:.1%} of "
          f"the classes found; {time.time() - started:.0f} s in all")
    print(f"pictures written to {args.out}/")
    return Run(quality, model, model_path, test_images, truth, predicted, cams)


if __name__ == "__main__":
    main()
