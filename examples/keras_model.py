"""Train a small Keras CNN on synthetic shapes, convert it to ONNX with tf2onnx, explain held-out images.

    python examples/keras_model.py --out out/keras

Keras 3 on TensorFlow. The model is exported through ``converters.keras`` with two of its layers kept as named
outputs; the explainer then runs without TensorFlow. Writes an overlay per explained image (Grad-CAM of the
true class at the last block) and, for the first few images, a grid of every class's map at both layers, and
prints how often the map's peak falls inside the object's box. Takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from examples.quickstart import peak_inside_box  # noqa: E402
from examples.shapes import CLASSES, make_shapes  # noqa: E402
from onnx_gradcam import Explainer  # noqa: E402
from onnx_gradcam.explanation import Explanation  # noqa: E402
from onnx_gradcam.pictures import grid, overlay  # noqa: E402

LAYERS = ("block3", "block4")  # both at a quarter of the input's resolution; block4 is the last before pooling


@dataclass
class Run:
    """What ``main`` made: the Keras model, its ONNX file, the held-out images (N, H, W, 3) and their labels,
    each layer's explanation of the true classes, and the share of maps whose peak is inside the object's box."""

    model: object
    onnx_path: str
    images: np.ndarray
    labels: np.ndarray
    explanations: dict[str, Explanation]
    inside: float


def build_model(size: int):
    """Conv-BatchNorm-ReLU blocks, each block's ReLU named (block1..block4), global pooling, a dense layer."""
    import keras

    def block(x, channels: int, name: str):
        x = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=0.9)(x)  # Keras' 0.99 lags behind a short training
        return keras.layers.Activation("relu", name=name)(x)

    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.MaxPooling2D()(block(inputs, 16, "block1"))
    x = keras.layers.MaxPooling2D()(block(x, 32, "block2"))
    x = block(block(x, 64, "block3"), 64, "block4")
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(len(CLASSES), name="logits")(x), name="shapes_cnn")


def train(size: int, count: int, epochs: int):
    import keras

    images, labels, _ = make_shapes(count, size=size, seed=1)
    keras.utils.set_random_seed(0)
    model = build_model(size)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(channels_last(images), labels, batch_size=64, epochs=epochs, verbose=2)
    return model


def channels_last(images: np.ndarray) -> np.ndarray:
    """make_shapes' (N, 3, H, W) as Keras' (N, H, W, 3)."""
    return np.ascontiguousarray(images.transpose(0, 2, 3, 1))


def write_pictures(out: str, explainers: dict[str, Explainer], images, labels, explanation: Explanation,
                   overlays: int, grids: int):
    """An overlay per image (true class, last layer); a grid per image of every class at every layer."""
    for i in range(min(overlays, len(images))):
        picture = overlay(images[i], explanation.cams[i], alpha=0.45)
        picture.resize((256, 256)).save(os.path.join(out, f"{i:03d}_{CLASSES[labels[i]]}.png"))
    count = min(grids, len(images))
    every_class = [list(range(len(CLASSES)))] * count
    per_layer = {layer: explainer(images[:count], every_class).cams for layer, explainer in explainers.items()}
    for i in range(count):
        names = [name + (" (true)" if c == labels[i] else "") for c, name in enumerate(CLASSES)]
        maps = {f"{name} @ {layer}": cams[i, c] for layer, cams in per_layer.items() for c, name in enumerate(names)}
        sheet = grid(images[i], maps, columns=len(CLASSES), cell=160, show_image=False)
        sheet.save(os.path.join(out, f"grid_{i:03d}_{CLASSES[labels[i]]}.png"))


def main(argv=None) -> Run:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/keras", help="folder for the model and the pictures")
    parser.add_argument("--size", type=int, default=64, help="image height and width")
    parser.add_argument("--train", type=int, default=4000, help="training images")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--test", type=int, default=200, help="held-out images to explain")
    parser.add_argument("--overlays", type=int, default=12, help="how many overlays to write")
    parser.add_argument("--grids", type=int, default=3, help="how many per-class grids to write")
    args = parser.parse_args(argv)

    from converters.keras import export

    os.makedirs(args.out, exist_ok=True)
    started = time.time()
    model = train(args.size, args.train, args.epochs)
    onnx_path = os.path.join(args.out, "shapes_cnn.onnx")
    export(model, onnx_path, layers=list(LAYERS), preprocessing={"size": [args.size, args.size]})
    print(f"exported to {onnx_path} ({time.time() - started:.0f} s so far)")

    test_images, labels, boxes = make_shapes(args.test, size=args.size, seed=2)
    images = channels_last(test_images)
    explainers = {layer: Explainer(onnx_path, layer=layer) for layer in LAYERS}
    explanations = {layer: explainer(images, labels) for layer, explainer in explainers.items()}
    last = explanations[LAYERS[-1]]
    accuracy = float((last.outputs["logits"].argmax(1) == labels).mean())
    inside = float(peak_inside_box(last.cams, boxes).mean())
    write_pictures(args.out, explainers, images, labels, last, args.overlays, args.grids)
    print(f"held-out accuracy {accuracy:.3f}; Grad-CAM ({LAYERS[-1]}) peak inside the object's box for "
          f"{inside:.1%} of {args.test} images; {time.time() - started:.0f} s in all")
    print(f"pictures written to {args.out}/")
    return Run(model, onnx_path, images, labels, explanations, inside)


if __name__ == "__main__":
    main()
