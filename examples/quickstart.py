"""Quick start: train a small CNN on synthetic shapes, export it to ONNX, explain held-out images on ONNX Runtime.

    python examples/quickstart.py --out out/quickstart

Writes an overlay PNG per explained image and prints how often the Grad-CAM peak falls inside the
object's box. Takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples.shapes import CLASSES, make_shapes  # noqa: E402
from onnx_gradcam import Explainer  # noqa: E402
from onnx_gradcam.pictures import overlay  # noqa: E402


def build_model():
    import torch.nn as nn

    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        nn.Sequential(*block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2), *block(32, 64),
                      *block(64, 64)),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, len(CLASSES)),
    )


def train(model, images, labels, epochs: int):
    import torch

    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x))
        correct = 0
        for start in range(0, len(x), 64):
            batch = order[start:start + 64]
            logits = model(x[batch])
            loss = torch.nn.functional.cross_entropy(logits, y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            correct += int((logits.argmax(1) == y[batch]).sum())
        print(f"epoch {epoch + 1}/{epochs}: training accuracy {correct / len(x):.3f}")
    return model.eval()


def peak_inside_box(cams: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Per image: does the map's maximum fall inside the object's box (x0, y0, x1, y1)?"""
    flat = cams.reshape(len(cams), -1).argmax(1)
    ys, xs = np.unravel_index(flat, cams.shape[1:])
    return (xs >= boxes[:, 0]) & (xs < boxes[:, 2]) & (ys >= boxes[:, 1]) & (ys < boxes[:, 3])


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/quickstart", help="folder for the model and the overlays")
    parser.add_argument("--train", type=int, default=4000, help="training images")
    parser.add_argument("--test", type=int, default=200, help="held-out images to explain")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--overlays", type=int, default=12, help="how many overlays to write")
    args = parser.parse_args(argv)

    import torch

    from converters.pytorch import export

    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    images, labels, _ = make_shapes(args.train, seed=1)
    torch.manual_seed(0)
    model = train(build_model(), images, labels, args.epochs)
    model_path = os.path.join(args.out, "shapes_cnn.onnx")
    export(model, torch.from_numpy(images[:2]), model_path)

    test_images, test_labels, test_boxes = make_shapes(args.test, seed=2)
    explainer = Explainer(model_path)  # layer="auto": the last conv block's output
    result = explainer(test_images, test_labels)
    accuracy = float((result.outputs[explainer.output].argmax(1) == test_labels).mean())
    inside = peak_inside_box(result.cams, test_boxes)
    for i in range(min(args.overlays, args.test)):
        picture = overlay(test_images[i].transpose(1, 2, 0), result.cams[i], alpha=0.45)
        picture.resize((256, 256)).save(os.path.join(args.out, f"{i:03d}_{CLASSES[test_labels[i]]}.png"))
    print(f"layer {explainer.layers[0]}")
    print(f"held-out accuracy {accuracy:.3f}; Grad-CAM peak inside the object's box for "
          f"{inside.mean():.1%} of {args.test} images; {time.time() - started:.0f} s in all")
    print(f"overlays written to {args.out}/")
    return float(inside.mean())


if __name__ == "__main__":
    main()
