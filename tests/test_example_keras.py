"""examples/keras_model.py runs end to end, and its Grad-CAM maps are the Keras Grad-CAM recipe's on the same
model, computed with ``tf.GradientTape`` (keras.io/examples/vision/grad_cam: channel weights = the gradients'
spatial mean, map = relu(activations . weights)).

The oracle runs on a float64 twin of the example's trained model (its own builder under Keras' float64 policy,
given the same weights), as in test_convert_keras.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from examples.keras_model import LAYERS, build_model, main  # noqa: E402
from examples.shapes import CLASSES  # noqa: E402
from onnx_gradcam import Explainer  # noqa: E402

SIZE = 48
COUNT = 12


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("keras_example")
    return out, main(["--out", str(out), "--size", str(SIZE), "--train", "1500", "--epochs", "3",
                      "--test", str(COUNT), "--overlays", "2", "--grids", "1"])


@pytest.fixture(scope="module")
def twin(run):
    model = run[1].model
    floatx, policy = keras.config.floatx(), keras.config.dtype_policy()
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    try:
        twin = build_model(SIZE)
    finally:
        keras.config.set_floatx(floatx)
        keras.config.set_dtype_policy(policy)
    twin.set_weights([w.astype(np.float64) for w in model.get_weights()])
    return twin


def test_writes_the_model_and_pictures(run):
    out, result = run
    written = sorted(os.listdir(out))
    assert "shapes_cnn.onnx" in written
    overlays = [f"{i:03d}_{CLASSES[result.labels[i]]}.png" for i in range(2)]
    assert set(overlays + [f"grid_000_{CLASSES[result.labels[0]]}.png"]) <= set(written)
    assert len([name for name in written if name.endswith(".png")]) == 3
    assert 0.0 <= result.inside <= 1.0


def tape_gradients(model, layer: str, images: np.ndarray, labels: np.ndarray):
    """The layer's activations and d(sum of the labels' logits)/d(activations), by GradientTape."""
    both = keras.Model(model.inputs, [model.get_layer(layer).output, model.output])
    with tf.GradientTape() as tape:
        activations, logits = both(tf.constant(images, tf.float64))
        score = tf.reduce_sum(tf.one_hot(labels, len(CLASSES), dtype=tf.float64) * logits)
    return activations.numpy(), tape.gradient(score, activations).numpy()


def keras_recipe(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """The recipe's heatmap, before its division by the maximum."""
    weights = gradients.mean(axis=(1, 2))                                       # (N, C)
    return np.maximum(np.einsum("nhwc,nc->nhw", activations, weights), 0)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize("layer", LAYERS)
def test_raw_maps_equal_the_keras_recipe(run, twin, layer):
    """Within 1e-4 of each image's maximum (a raw map's scale is arbitrary, see test_convert_keras.py). Every
    map must be non-zero, or the comparison would say nothing: the training settings above see to it."""
    _, result = run
    ours = result.explanations[layer].raw[layer]
    theirs = keras_recipe(*tape_gradients(twin, layer, result.images, result.labels))
    assert ours.shape == theirs.shape == (COUNT, SIZE // 4, SIZE // 4)
    scale = theirs.reshape(COUNT, -1).max(axis=1)
    assert np.all(scale > 0)
    assert np.all(np.abs(ours - theirs).reshape(COUNT, -1).max(axis=1) <= 1e-4 * scale)


@pytest.mark.parametrize("layer", LAYERS)
def test_gradients_equal_gradient_tape(run, twin, layer):
    _, result = run
    ours = Explainer(result.onnx_path, layer=layer).gradients(result.images, result.labels)[layer]
    activations, gradients = tape_gradients(twin, layer, result.images, result.labels)
    assert relative_error(ours.activations, activations) <= 1e-4
    assert relative_error(ours.gradients, gradients) <= 1e-4
