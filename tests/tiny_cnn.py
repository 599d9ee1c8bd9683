"""A tiny channels-last CNN built from ONNX ops ONNX Runtime's CPU runs in float16, float32 and float64, with
a float64 NumPy oracle of everything the explainer computes on it: forward pass, gradients at both layers,
every CAM method and the post-processing.

    x (N, 8, 8, 3) -> MatMul + Add -> Sigmoid = layer "A" (N, 8, 8, 6)
      -> MaxPool 2x2 (NCHW, between Transposes) -> MatMul -> Relu = layer "B" (N, 4, 4, 8)
      -> Mul, Div by constants -> Reshape (N, 16, 8) -> ReduceMean -> MatMul + Add = logits (N, 5)

Layer A is positive (no MaxPool ties, no Grad-CAM++ pole); layer B is post-ReLU. Tensor and node names are
given by a :class:`Names`, so the same graph can carry names that collide with the explainer's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from onnx import helper, numpy_helper

HEIGHT = WIDTH = 8
CHANNELS_IN, CHANNELS_A, CHANNELS_B, CLASSES = 3, 6, 8, 5
SCALE, DIVISOR = 1.7, 0.6
SEED = 18
"""Weights under which every method's map of every image at each layer spans [0, 1] for the classes the
tests explain (with most seeds some Grad-CAM map is all zero: every channel weight negative), since a flat
map compares equal to any other flat map."""
TENSORS = ("input", "t1", "t2", "A", "t3", "t4", "t5", "t6", "B", "t7", "t8", "t9", "t10", "t11", "logits")
WEIGHTS = ("w1", "b1", "w2", "w3", "b3", "scale", "divisor", "shape", "axes")


@dataclass
class Names:
    """The name of each tensor, weight and node of the graph (by its role above); by default the roles."""

    tensors: dict = field(default_factory=lambda: {t: t for t in TENSORS})
    weights: dict = field(default_factory=lambda: {w: w for w in WEIGHTS})
    nodes: list = field(default_factory=lambda: [f"node{i}" for i in range(14)])


def weights(seed: int = SEED) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w1": rng.normal(size=(CHANNELS_IN, CHANNELS_A)), "b1": rng.normal(size=CHANNELS_A) * 0.1,
            "w2": rng.normal(size=(CHANNELS_A, CHANNELS_B)), "w3": rng.normal(size=(CHANNELS_B, CLASSES)),
            "b3": rng.normal(size=CLASSES) * 0.1}


def images(count: int = 3, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, HEIGHT, WIDTH, CHANNELS_IN))


def model(dtype, names: Names = None, seed: int = SEED):
    """The ONNX model in ``dtype`` (np.float16, np.float32 or np.float64)."""
    names = names or Names()
    t, w, n = names.tensors, names.weights, iter(names.nodes)
    elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    values = weights(seed)
    initializers = [numpy_helper.from_array(values[k].astype(dtype), w[k]) for k in ("w1", "b1", "w2", "w3", "b3")]
    initializers += [numpy_helper.from_array(np.asarray(SCALE, dtype), w["scale"]),
                     numpy_helper.from_array(np.asarray(DIVISOR, dtype), w["divisor"]),
                     numpy_helper.from_array(np.asarray([0, 16, CHANNELS_B], np.int64), w["shape"]),
                     numpy_helper.from_array(np.asarray([1], np.int64), w["axes"])]

    def node(op, inputs, output, **attrs):
        return helper.make_node(op, inputs, [t[output]], name=next(n), **attrs)

    nodes = [
        node("MatMul", [t["input"], w["w1"]], "t1"), node("Add", [t["t1"], w["b1"]], "t2"),
        node("Sigmoid", [t["t2"]], "A"), node("Transpose", [t["A"]], "t3", perm=[0, 3, 1, 2]),
        node("MaxPool", [t["t3"]], "t4", kernel_shape=[2, 2], strides=[2, 2]),
        node("Transpose", [t["t4"]], "t5", perm=[0, 2, 3, 1]), node("MatMul", [t["t5"], w["w2"]], "t6"),
        node("Relu", [t["t6"]], "B"), node("Mul", [t["B"], w["scale"]], "t7"),
        node("Div", [t["t7"], w["divisor"]], "t8"), node("Reshape", [t["t8"], w["shape"]], "t9"),
        node("ReduceMean", [t["t9"], w["axes"]], "t10", keepdims=0), node("MatMul", [t["t10"], w["w3"]], "t11"),
        node("Add", [t["t11"], w["b3"]], "logits"),
    ]
    graph = helper.make_graph(nodes, "tiny_cnn",
                              [helper.make_tensor_value_info(t["input"], elem_type, ["N", HEIGHT, WIDTH, CHANNELS_IN])],
                              [helper.make_tensor_value_info(t["logits"], elem_type, ["N", CLASSES])], initializers)
    built = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    built.ir_version = 10
    return built


# --- the float64 oracle ----------------------------------------------------------------------------------
def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _pool(a):
    """2x2 max pool of (N, 8, 8, C) -> (N, 4, 4, C), and the one-hot mask of each window's maximum."""
    n, h, w, c = a.shape
    windows = a.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(n, h // 2, w // 2, c, 4)
    winner = np.eye(4)[windows.argmax(-1)]                                       # (N, 4, 4, C, 4)
    mask = winner.reshape(n, h // 2, w // 2, c, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(n, h, w, c)
    return windows.max(-1), mask


def head_from_a(a, v):
    pooled, _ = _pool(a)
    return head_from_b(np.maximum(pooled @ v["w2"], 0), v)


def head_from_b(b, v):
    pooled = (b * SCALE / DIVISOR).reshape(len(b), -1, CHANNELS_B).mean(1)
    return pooled @ v["w3"] + v["b3"]


def forward(x, v):
    """(A, B, logits) in float64."""
    a = _sigmoid(x @ v["w1"] + v["b1"])
    pooled, _ = _pool(a)
    b = np.maximum(pooled @ v["w2"], 0)
    return a, b, head_from_b(b, v)


def gradients(x, v, classes):
    """d(logit of each image's class) / d(A) and / d(B), float64, NHWC."""
    a, b, _ = forward(x, v)
    pooled, mask = _pool(a)
    z = pooled @ v["w2"]
    per_position = SCALE / DIVISOR / 16
    d_b = np.broadcast_to(v["w3"][:, classes].T[:, None, None, :] * per_position, b.shape).copy()
    d_pooled = (d_b * (z > 0)) @ v["w2"].T
    d_a = np.repeat(np.repeat(d_pooled, 2, axis=1), 2, axis=2) * mask
    return d_a, d_b


def _nchw(t):
    return t.transpose(0, 3, 1, 2)


def gradient_raw(method: str, activations, grads):
    """The raw map (N, h, w) of a gradient method, from NHWC activations and gradients (pytorch-grad-cam's
    formulas, Grad-CAM++ without its 1e-6)."""
    a, g = _nchw(activations), _nchw(grads)
    if method == "gradcam":
        contributions = a * g.mean(axis=(2, 3), keepdims=True)
    elif method == "hirescam":
        contributions = a * g
    elif method == "gradcam-elementwise":
        contributions = np.maximum(a * g, 0)
    elif method == "gradcam++":
        sums = a.sum(axis=(2, 3), keepdims=True)
        denominator = 2 * g**2 + sums * g**3
        alpha = np.where(denominator == 0, 0, g**2 / np.where(denominator == 0, 1, denominator))
        contributions = a * (alpha * np.maximum(g, 0)).sum(axis=(2, 3), keepdims=True)
    elif method == "xgradcam":
        contributions = a * (g * a).sum(axis=(2, 3), keepdims=True) / (a.sum(axis=(2, 3), keepdims=True) + 1e-7)
    elif method == "layercam":
        contributions = np.maximum(g, 0) * a
    else:
        raise ValueError(method)
    return np.maximum(contributions.sum(axis=1), 0)


def eigen_raw(values):
    """EigenCAM's projection of NHWC values, per image, sign oriented so the largest magnitude is positive."""
    maps = []
    for image in values:
        matrix = image.reshape(-1, image.shape[-1])
        matrix = matrix - matrix.mean(axis=0)
        projection = matrix @ np.linalg.svd(matrix, full_matrices=False)[2][0]
        projection = -projection if abs(projection.min()) > abs(projection.max()) else projection
        maps.append(np.maximum(projection.reshape(image.shape[:2]), 0))
    return np.stack(maps)


def _align_corners(size_in, size_out):
    position = np.arange(size_out) * (size_in - 1) / (size_out - 1)
    low = np.minimum(np.floor(position).astype(int), size_in - 2)
    matrix = np.zeros((size_out, size_in))
    matrix[np.arange(size_out), low] = 1 - (position - low)
    matrix[np.arange(size_out), low + 1] += position - low
    return matrix


def scorecam_raw(x, activations, v, classes):
    """Score-CAM: softmax over channels of the class score of the image masked by each upsampled channel."""
    rows, cols = _align_corners(activations.shape[1], HEIGHT), _align_corners(activations.shape[2], WIDTH)
    maps = []
    for image, acts, c in zip(x, activations, classes):
        masks = np.einsum("Hh,hwc,Ww->cHW", rows, acts, cols)
        low, high = masks.min(axis=(1, 2), keepdims=True), masks.max(axis=(1, 2), keepdims=True)
        masks = (masks - low) / (high - low + 1e-8)
        scores = forward(image[None] * masks[..., None], v)[2][:, c]
        weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
        maps.append(np.maximum(np.einsum("c,hwc->hw", weights, acts), 0))
    return np.stack(maps)


def ablationcam_raw(activations, head, v, classes):
    """Ablation-CAM: relative drop of the class score with each channel set to 0 (post-ReLU) or min - 1e7."""
    maps = []
    for acts, c in zip(activations, classes):
        value = 0.0 if acts.min() == 0 else acts.min() - 1e7
        original = head(acts[None], v)[0, c]
        ablated = np.repeat(acts[None], acts.shape[-1], axis=0)
        for channel in range(acts.shape[-1]):
            ablated[channel, ..., channel] = value
        weights = (original - head(ablated, v)[:, c]) / original
        maps.append(np.maximum(np.einsum("c,hwc->hw", weights, acts), 0))
    return np.stack(maps)


def _half_pixel(size_in, size_out):
    """(size_out, size_in) bilinear interpolation with half-pixel centres, edges clamped (ONNX Resize, cv2)."""
    position = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
    low = np.minimum(np.floor(position).astype(int), max(size_in - 2, 0))
    matrix = np.zeros((size_out, size_in))
    matrix[np.arange(size_out), low] = 1 - (position - low)
    matrix[np.arange(size_out), np.minimum(low + 1, size_in - 1)] += position - low
    return matrix


def _min_max(maps):
    low = maps.min(axis=(1, 2), keepdims=True)
    shifted = maps - low
    return shifted / (shifted.max(axis=(1, 2), keepdims=True) + 1e-7)


def finish(raws):
    """Raw maps of one or more layers -> final maps: min-max, upsample to the image, mean, min-max."""
    upsampled = [np.einsum("Hh,nhw,Ww->nHW", _half_pixel(r.shape[1], HEIGHT), _min_max(r),
                           _half_pixel(r.shape[2], WIDTH)) for r in raws]
    return _min_max(np.mean(upsampled, axis=0))


def oracle_maps(method: str, layers, x, classes, seed: int = SEED):
    """The final float64 maps of ``method`` at ``layers`` (names among "A", "B") for images ``x``."""
    v = weights(seed)
    a, b, _ = forward(x, v)
    d_a, d_b = gradients(x, v, classes)
    acts = {"A": (a, d_a, head_from_a), "B": (b, d_b, head_from_b)}
    raws = []
    for layer in layers:
        activations, grads, head = acts[layer]
        if method == "eigencam":
            raws.append(eigen_raw(activations))
        elif method == "eigengradcam":
            raws.append(eigen_raw(activations * grads))
        elif method == "scorecam":
            raws.append(scorecam_raw(x, activations, v, classes))
        elif method == "ablationcam":
            raws.append(ablationcam_raw(activations, head, v, classes))
        else:
            raws.append(gradient_raw(method, activations, grads))
    return finish(raws)
