"""Gradients at kinks follow the frameworks: each op is fed values exactly at its kink (and on either side)
and its gradient from the emitted graph on ONNX Runtime equals torch.autograd's of the same function.

The conventions (torch's; TensorFlow's relu6 agrees): Relu, Clip (clamp, relu6, hardtanh), HardSigmoid
give 0 at a threshold or bound; LeakyRelu, PRelu and Elu take the negative side at 0; HardSwish gives 0
at -3 and 1 at +3 (torch 2.14's pieces); Abs gives sign(0) = 0; Max / Min and ReduceMax / ReduceMin share a tie
evenly; MaxPool and GlobalMaxPool give a tied window's gradient to its first element.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from onnx_gradcam.autodiff import gradient_model

KINKS = np.array([-7.0, -3.0, -1.0, 0.0, 0.5, 1.0, 3.0, 6.0, 7.0], np.float32)

CASES = {
    "relu": ("y = Relu(x)", torch.relu),
    "clip_0_6": ("y = Clip(x, low, high)", lambda x: torch.clamp(x, 0, 6)),
    "relu6": ("y = Clip(x, low, high)", F.relu6),
    "hardtanh": ("y = Clip(x, minus_one, one)", lambda x: F.hardtanh(x, -1, 1)),
    "clip_min_only": ("y = Clip(x, low)", lambda x: torch.clamp(x, min=0)),
    "leaky_relu": ("y = LeakyRelu<alpha: float = 0.2>(x)", lambda x: F.leaky_relu(x, 0.2)),
    "elu": ("y = Elu<alpha: float = 0.7>(x)", lambda x: F.elu(x, 0.7)),
    "hard_sigmoid": ("y = HardSigmoid<alpha: float = 0.16666667, beta: float = 0.5>(x)", F.hardsigmoid),
    "hard_swish": ("y = HardSwish(x)", F.hardswish),
    "abs": ("y = Abs(x)", torch.abs),
    "max_tie": ("y = Max(x, one)", lambda x: torch.maximum(x, torch.tensor(1.0))),
    "min_tie": ("y = Min(x, one)", lambda x: torch.minimum(x, torch.tensor(1.0))),
}


def _model(body: str, shape: str) -> onnx.ModelProto:
    text = f"""<ir_version: 10, opset_import: ["" : 18]>
    g (float{shape} x) => (float{shape} y)
    <float low = {{0.0}}, float high = {{6.0}}, float one = {{1.0}}, float minus_one = {{-1.0}}>
    {{ {body} }}"""
    return onnx.parser.parse_model(text)


def _ours(model: onnx.ModelProto, x: np.ndarray, seed: np.ndarray) -> np.ndarray:
    emitted = gradient_model(model, ["x"], "y")
    session = ort.InferenceSession(emitted.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["grad/x"], {"x": x, "seed": seed})[0]


def _torch(function, x: np.ndarray, seed: np.ndarray) -> np.ndarray:
    tensor = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    (gradient,) = torch.autograd.grad((function(tensor) * torch.from_numpy(seed.astype(np.float64))).sum(), tensor)
    return gradient.numpy()


@pytest.mark.parametrize("case", sorted(CASES))
def test_elementwise_kinks_follow_torch(case):
    body, function = CASES[case]
    seed = np.linspace(0.5, 1.5, KINKS.size).astype(np.float32)
    ours = _ours(_model(body, f"[{KINKS.size}]"), KINKS, seed)
    np.testing.assert_allclose(ours, _torch(function, KINKS, seed), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reduce, function", [("ReduceMax", torch.amax), ("ReduceMin", torch.amin)])
def test_tied_extrema_share_the_gradient(reduce, function):
    x = np.array([[2.0, 5.0, 5.0, 1.0], [3.0, 3.0, 3.0, 3.0]], np.float32)
    text = f"""<ir_version: 10, opset_import: ["" : 18]>
    g (float[2,4] x) => (float[2,1] y) <int64[1] axes = {{1}}> {{ y = {reduce}(x, axes) }}"""
    seed = np.array([[2.0], [4.0]], np.float32)
    ours = _ours(onnx.parser.parse_model(text), x, seed)
    np.testing.assert_allclose(ours, _torch(lambda t: function(t, dim=1, keepdim=True), x, seed), rtol=1e-6)


@pytest.mark.parametrize("op", ["MaxPool", "GlobalMaxPool"])
def test_a_tied_pooling_window_gives_its_gradient_to_its_first_element(op):
    x = np.zeros((1, 2, 4, 4), np.float32)
    x[0, 1, :2, :2] = 3.0  # channel 1: one window tied at 3, the rest tied at 0
    if op == "MaxPool":
        body, out, function = "y = MaxPool<kernel_shape = [2, 2], strides = [2, 2]>(x)", "[1,2,2,2]", \
            lambda t: F.max_pool2d(t, 2)
    else:
        body, out, function = "y = GlobalMaxPool(x)", "[1,2,1,1]", lambda t: F.adaptive_max_pool2d(t, 1)
    text = f"""<ir_version: 10, opset_import: ["" : 18]>
    g (float[1,2,4,4] x) => (float{out} y) {{ {body} }}"""
    seed = np.arange(1, 1 + np.prod([int(d) for d in out[1:-1].split(",")]), dtype=np.float32).reshape(
        [int(d) for d in out[1:-1].split(",")])
    ours = _ours(onnx.parser.parse_model(text), x, seed)
    np.testing.assert_allclose(ours, _torch(function, x, seed), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["features.13.conv.0", "features.17.conv.0"])
def test_mobilenet_v2_gradients_through_relu6_at_zero_equal_autograd(layer, tmp_path):
    """Random-weight MobileNetV2 feeds ReLU6 inputs that are exactly 0 (a BatchNorm of an all-zero channel):
    where the convention at the bound decides most of the layer's gradient."""
    from test_torchvision_exactness import CLASSES, _build, _torch_side, relative_error

    from converters.pytorch import export
    from onnx_gradcam import Explainer

    model, images = _build("mobilenet_v2")
    path = tmp_path / "mobilenet_v2.onnx"
    export(model, images, path, layers=[layer])
    ours = Explainer(path, layer=layer, providers="CPUExecutionProvider").gradients(images.numpy(), CLASSES)[layer]
    activations, gradient = _torch_side(model, images, layer)
    assert (activations == 0).mean() > 0.05, "no value at the ReLU6 bound 0: the test would not reach the kink"
    assert relative_error(ours.activations, activations) <= 1e-4
    assert relative_error(ours.gradients, gradient) <= 1e-4
