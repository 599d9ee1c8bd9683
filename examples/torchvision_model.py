"""Convert a torchvision classifier to ONNX and compare CAM methods at two of its layers, on ONNX Runtime.

    python examples/torchvision_model.py --out out/torchvision
    python examples/torchvision_model.py --model resnet50 --weights DEFAULT --image photo.jpg

Exports the model with ``--layers`` kept as named outputs and ImageNet preprocessing recorded in the ONNX
metadata, reads the picture through that preprocessing, prints the top-5 classes, and writes ``grid.png``
(every method at every layer, labelled) and ``overlay.png`` (Grad-CAM at the last layer). Without
``--weights`` the weights are random (nothing is downloaded) and the maps show what an untrained network
looks at; ``--weights DEFAULT`` takes torchvision's pretrained weights, from torch's cache or the internet,
and names the classes. Without ``--image`` a synthetic picture is drawn and saved as ``input.png``.
About 10 s for resnet18 at 224x224 on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples.shapes import make_shapes  # noqa: E402
from onnx_gradcam import Explainer  # noqa: E402
from onnx_gradcam.files import preprocessing_for  # noqa: E402
from onnx_gradcam.images import IMAGENET_MEAN, IMAGENET_STD, display_rgb, load_picture  # noqa: E402
from onnx_gradcam.pictures import grid, overlay  # noqa: E402

METHODS = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam")


@dataclass
class Comparison:
    """What ``main`` made: the torch model, its ONNX file, the preprocessed input (1, 3, H, W), the class
    explained, and the map (H, W) of each (method, layer)."""

    model: object
    onnx_path: str
    image: np.ndarray
    target: int
    maps: dict[tuple[str, str], np.ndarray]


def build_model(name: str, weights: Optional[str]):
    """The torchvision model in eval mode, and its class names (None without pretrained weights)."""
    import torch
    import torchvision

    if weights is None:
        torch.manual_seed(0)  # the same random weights every run
        return torchvision.models.get_model(name, weights=None).eval(), None
    chosen = torchvision.models.get_model_weights(name).verify(weights)
    try:
        model = torchvision.models.get_model(name, weights=chosen)
    except OSError as error:  # URLError included: no cached copy and no internet
        raise SystemExit(f"cannot load {chosen} (not in torch's cache and not downloadable): {error}") from None
    return model.eval(), chosen.meta["categories"]


def synthetic_picture(size: int) -> Image.Image:
    """A coloured shape on clutter, for running the example without a picture of one's own."""
    images, _, _ = make_shapes(1, size=size, seed=4)
    return Image.fromarray(np.round(images[0].transpose(1, 2, 0) * 255).astype(np.uint8))


def top5(logits: np.ndarray, categories: Optional[list[str]]) -> list[tuple[str, float]]:
    """(class, softmax probability) of the five highest logits of one image, named where names are known."""
    shifted = np.exp(logits.astype(np.float64) - logits.max())
    probabilities = shifted / shifted.sum()
    best = np.argsort(-logits, kind="stable")[:5]  # by logit: probabilities this close can round to ties
    return [(f"{categories[c]} (class {c})" if categories else f"class {c}", float(probabilities[c])) for c in best]


def explain_all(onnx_path: str, image: np.ndarray, target: int, layers: list[str], methods) -> dict:
    """The map of each (method, layer) for the one image and class."""
    return {(method, layer): Explainer(onnx_path, layer=layer, method=method)(image, target).cams[0]
            for layer in layers for method in methods}


def main(argv=None) -> Comparison:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="a torchvision classification model name")
    parser.add_argument("--weights", default=None,
                        help="torchvision weights (DEFAULT, IMAGENET1K_V1, ...); none: random weights")
    parser.add_argument("--layers", nargs="+", default=["layer3", "layer4"],
                        help="module names to explain at (model.named_modules() names); the last is the overlay's")
    parser.add_argument("--image", default=None, help="a picture to explain (default: a synthetic one)")
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", default="out/torchvision", help="folder for the model and the pictures")
    args = parser.parse_args(argv)

    import torch

    from converters.pytorch import export

    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    model, categories = build_model(args.model, args.weights)
    onnx_path = os.path.join(args.out, f"{args.model}.onnx")
    export(model, torch.zeros(2, 3, args.size, args.size), onnx_path, layers=args.layers,
           preprocessing={"size": [args.size, args.size], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
                          "channel_order": "RGB"})
    print(f"exported {args.model} to {onnx_path} ({time.time() - started:.1f} s)")

    if args.image:
        picture = load_picture(args.image)
    else:
        picture = synthetic_picture(args.size)
        picture.save(os.path.join(args.out, "input.png"))
    first = Explainer(onnx_path, layer=args.layers[-1])
    preprocessing = preprocessing_for(first)  # the size, mean and std the export recorded
    image = preprocessing(picture)[None]
    result = first(image)  # targets=None: the top class
    target = int(result.classes[0])
    for rank, (name, probability) in enumerate(top5(result.outputs[first.output][0], categories), 1):
        print(f"{rank}. {name}: {probability:.3f}")

    maps = explain_all(onnx_path, image, target, args.layers, args.methods)
    shown = display_rgb(picture, preprocessing.size)
    sheet = grid(shown, {f"{method} @ {layer}": cam for (method, layer), cam in maps.items()},
                 columns=len(args.methods), cell=192, show_image=False)
    sheet.save(os.path.join(args.out, "grid.png"))
    overlay(shown, result.cams[0]).save(os.path.join(args.out, "overlay.png"))
    print(f"explained class {target} with {len(args.methods)} methods at {', '.join(args.layers)}; "
          f"{time.time() - started:.0f} s in all; pictures in {args.out}/")
    return Comparison(model, onnx_path, image, target, maps)


if __name__ == "__main__":
    main()
