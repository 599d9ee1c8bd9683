"""float16 networks as onnxconverter-common writes them (``convert_float_to_float16(keep_io_types=True)``:
float32 inputs and outputs, float16 everywhere inside), explained with both ``precision`` choices.

Against the float32 model they were converted from (the float16 model's weights and activations are rounded,
so no bound near float32's can hold), measured with this file's inputs:

    resnet50  default layer  gradients 3.1e-4 (model) / 2.1e-4 (float32) relative; maps Pearson 0.999999
    resnet50  layer3         gradients 4.0e-2 / 4.0e-2;  maps Pearson 0.99998
    vit_b_16  block 11 ln_1  gradients 1.1e-3 / 9.4e-4;  maps Pearson 0.999999
    vit_b_16  block 5 ln_2   gradients 1.1e-3 / 1.0e-3;  maps Pearson 0.999999

At resnet50's layer3 the rounding of nine convolutions' inputs and weights moves ReLU masks (this random-weight
network has no trained normalisation): the maps agree all the same. What ``precision="float32"`` changes is the
backward pass's own rounding, shown where the head is linear (global pooling and the classifier): there its
gradient equals float64's of the same float16 weights to 1e-7, where the float16 backward pass is 2e-4 off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from onnxconverter_common import float16

from converters.pytorch import export
from onnx_gradcam import Explainer, TokenGrid
from test_optimised_graphs import torchvision_network

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:the float32 number:UserWarning")]

PRECISIONS = ["model", "float32"]


@dataclass
class Network:
    name: str
    size: int
    layers: dict
    gradient_rtol: dict
    """Per layer: the largest relative difference of the gradients from the float32 model's asserted."""
    tokens: Optional[TokenGrid] = None
    paths: dict = field(default_factory=dict)
    images: Optional[np.ndarray] = None


NETWORKS = {
    "resnet50": Network("resnet50", 96, {"default": "auto", "inner": "layer3"},
                        {"default": 1e-3, "inner": 8e-2}),
    "vit_b_16": Network("vit_b_16", 64, {"default": "encoder.layers.encoder_layer_11.ln_1",
                                         "inner": "encoder.layers.encoder_layer_5.ln_2"},
                        {"default": 5e-3, "inner": 5e-3}, tokens=TokenGrid(4, 4, skip=1)),
}


@pytest.fixture(scope="module", params=list(NETWORKS))
def network(request, tmp_path_factory) -> Network:
    torch.manual_seed(0)
    case = NETWORKS[request.param]
    folder = tmp_path_factory.mktemp(case.name)
    images = torch.randn(2, 3, case.size, case.size)
    case.images = images.numpy()
    case.paths = {"float32": str(folder / "float32.onnx"), "float16": str(folder / "float16.onnx")}
    export(torchvision_network(case.name), images, case.paths["float32"])
    half = float16.convert_float_to_float16(onnx.load(case.paths["float32"]), keep_io_types=True)
    assert sum(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer) > 10
    onnx.save(half, case.paths["float16"])
    return case


def _explain(network: Network, which: str, layer: str, precision: str = "float32") -> Explainer:
    return Explainer(network.paths[which], layer=layer, tokens=network.tokens, precision=precision)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("which", ["default", "inner"])
def test_float16_model_follows_its_float32_source(network, which, precision):
    layer = network.layers[which]
    single = _explain(network, "float32", layer)
    reference = single(network.images)
    classes = [int(c) for c in reference.classes]  # the float32 model's top classes, for both
    assert np.ptp(reference.cams, axis=(1, 2)).min() > 0.5, "the float32 maps are flat: nothing to compare"
    (expected,) = single.gradients(network.images, classes).values()

    half = _explain(network, "float16", layer, precision)
    (got,) = half.gradients(network.images, classes).values()
    assert got.gradients.dtype == (np.float32 if precision == "float32" else np.float16)
    difference = np.linalg.norm(got.gradients.astype(np.float64) - expected.gradients)
    assert difference <= network.gradient_rtol[which] * np.linalg.norm(expected.gradients)

    cams = half(network.images, classes).cams
    assert np.isfinite(cams).all() and np.ptp(cams, axis=(1, 2)).min() > 0.5
    assert np.corrcoef(cams.ravel(), reference.cams.ravel())[0, 1] >= 0.99


@pytest.mark.parametrize("network", ["resnet50"], indirect=True)
def test_float32_precision_accumulates_the_backward_pass_in_float32(network):
    """resnet50's default layer: the head is mean pooling and the classifier, linear, so its gradient is the
    same at any activation: float64 of the float16 weights is the oracle, checked on the forward pass first."""
    model = onnx.load(network.paths["float16"])
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    fc, bias = weights["model.fc.weight"], weights["model.fc.bias"]
    seed = np.zeros((2, fc.shape[0]), np.float32)
    seed[:, [3, 7]] = 1.0
    errors = {}
    for precision in PRECISIONS:
        explainer = _explain(network, "float16", "auto", precision)
        (found,) = explainer.gradients(network.images, seed).values()
        activations = found.activations.astype(np.float64)
        logits = activations.mean(axis=(2, 3)) @ fc.T + bias
        output = explainer(network.images).outputs[explainer.output]
        assert np.abs(logits - output).max() <= 1e-3 * np.abs(output).max(), "the oracle's forward differs"
        h, w = activations.shape[2:]
        expected = np.broadcast_to((seed @ fc / (h * w))[:, :, None, None], activations.shape)
        errors[precision] = np.linalg.norm(found.gradients - expected) / np.linalg.norm(expected)
    assert errors["float32"] <= 1e-6
    assert errors["model"] > 10 * errors["float32"], errors
