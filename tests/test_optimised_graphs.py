"""Deployed models as optimisers wrote them: torchvision networks optimised offline by ONNX Runtime (CPU, at
ORT_ENABLE_BASIC, EXTENDED and ALL, through ``SessionOptions.optimized_model_filepath``) and by onnxslim explain
as the models they were made from: the same gradients, within 1e-4, at the default layer and at an inner one.

What the optimisers write (ONNX Runtime 1.31, these networks): EXTENDED fuses Conv and its activation into
com.microsoft.FusedConv, the attention's scaled MatMul into FusedMatMul, bias and Gelu into BiasGelu, a residual
sum and LayerNormalization into SkipLayerNormalization; ALL runs the convolutions in the blocked NCHWc layout
(com.microsoft.nchwc Conv, MaxPool, ReorderInput, ReorderOutput). Both levels, and onnxslim, drop the nodes'
``pkg.torch.onnx.name_scopes``, so module names come only from the converter's metadata: the layers here are
exported by name (``converters.pytorch.export(..., layers=...)``), whose graph outputs no optimiser removes.
At ALL such an output can be a ReorderOutput copy beside the blocked network (resnet50's ``layer3``): its
gradient is the blocked tensor's, reordered the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import onnx
import onnxruntime as ort
import onnxslim
import pytest
import torch
import torchvision

from converters.pytorch import export
from onnx_gradcam import Explainer, TokenGrid

pytestmark = pytest.mark.slow

VARIANTS = ["BASIC", "EXTENDED", "ALL", "onnxslim"]


@dataclass
class Network:
    """A torchvision network exported with its inner layer, and the files the optimisers made of it."""

    name: str
    default: str
    inner: str
    tokens: Optional[TokenGrid] = None
    images: Optional[np.ndarray] = None
    paths: dict = field(default_factory=dict)


NETWORKS = {
    "resnet50": dict(default="auto", inner="layer3"),
    "mobilenet_v3_large": dict(default="auto", inner="features.4.block.2"),
    # The transformer's layers are named, with their token grid; the last block's norm stands for the default.
    "vit_b_16": dict(default="encoder.layers.encoder_layer_11.ln_1", inner="encoder.layers.encoder_layer_5.ln_2",
                     tokens=TokenGrid(4, 4, skip=1)),
}


def torchvision_network(name: str) -> torch.nn.Module:
    if name == "vit_b_16":
        model = torchvision.models.vit_b_16(weights=None, image_size=64)
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the head
        return model.eval()
    return getattr(torchvision.models, name)(weights=None).eval()


def optimise(source: str, level: str, path: str) -> str:
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    options.optimized_model_filepath = path
    ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return path


@pytest.fixture(scope="module", params=list(NETWORKS))
def network(request, tmp_path_factory) -> Network:
    torch.manual_seed(0)
    case = Network(request.param, **NETWORKS[request.param])
    folder = tmp_path_factory.mktemp(case.name)
    images = torch.randn(2, 3, 64, 64)
    case.images = images.numpy()
    source = str(folder / "source.onnx")
    export(torchvision_network(case.name), images, source,
           layers=[layer for layer in (case.default, case.inner) if layer != "auto"])
    case.paths = {level: optimise(source, level, str(folder / f"{level}.onnx")) for level in VARIANTS[:3]}
    for level in ("EXTENDED", "ALL"):  # so the gradients below come through the contrib ops' rules
        assert any(node.domain.startswith("com.microsoft") for node in onnx.load(case.paths[level]).graph.node)
    case.paths["source"] = source
    case.paths["onnxslim"] = str(folder / "slim.onnx")
    onnx.save(onnxslim.slim(onnx.load(source)), case.paths["onnxslim"])
    return case


def gradients(network: Network, variant: str, layer: str):
    explainer = Explainer(network.paths[variant], layer=layer, tokens=network.tokens)
    (found,) = explainer.gradients(network.images, [3, 7]).values()
    return explainer.subject.layers[0].tensor, found.gradients


@pytest.mark.parametrize("which", ["default", "inner"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_optimised_model_has_the_gradients_of_its_source(network, variant, which):
    layer = getattr(network, which)
    source_tensor, expected = gradients(network, "source", layer)
    tensor, got = gradients(network, variant, layer)
    assert tensor == source_tensor
    assert np.linalg.norm(expected) > 0
    assert np.linalg.norm(got - expected) <= 1e-4 * np.linalg.norm(expected)


@pytest.mark.parametrize("network", ["resnet50"], indirect=True)
def test_a_copy_beside_the_blocked_network_starts_no_head(network):
    """resnet50's layer3 at ALL: gradient methods work through the blocked tensor, a cut-out head cannot."""
    explainer = Explainer(network.paths["ALL"], layer=network.inner, method="ablationcam")
    assert explainer.layers[0].blocked is not None
    with pytest.raises(ValueError, match=r"NCHW copies beside the network.*ORT_ENABLE_EXTENDED"):
        explainer(network.images[:1], 3)
