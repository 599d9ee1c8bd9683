"""Models in the forms deployment tools write them: other opset domains imported, graphs ONNX Runtime's
offline optimiser rewrote."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from onnx_gradcam import Explainer

CLASSES = [1, 5, 7, 9, 11, 13, 15, 17]


def _optimised(path: str, level, out: str) -> str:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = out
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return out


def test_a_model_importing_other_domains_explains_as_before(resnet, tmp_path):
    _, images, path = resnet
    model = onnx.load(path)
    model.opset_import.extend([onnx.helper.make_opsetid("com.microsoft", 1),
                               onnx.helper.make_opsetid("com.ms.internal.nhwc", 1)])
    plain = Explainer(path)(images.numpy(), CLASSES).cams
    imported = Explainer(model)(images.numpy(), CLASSES).cams
    np.testing.assert_array_equal(imported, plain)


@pytest.mark.parametrize("layer", ["auto", "layer3.1"])
def test_a_graph_optimised_offline_at_basic_level_gives_the_same_gradients(resnet, tmp_path, layer):
    _, images, path = resnet
    optimised = _optimised(path, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, str(tmp_path / "basic.onnx"))
    assert {o.domain for o in onnx.load(optimised).opset_import} >= {"com.microsoft"}
    theirs = Explainer(optimised, layer=layer).gradients(images.numpy(), CLASSES)
    ours = Explainer(path, layer=layer).gradients(images.numpy(), CLASSES)
    (expected,), (actual,) = ours.values(), theirs.values()
    error = np.linalg.norm(actual.gradients - expected.gradients) / np.linalg.norm(expected.gradients)
    assert np.linalg.norm(expected.gradients) > 0 and error <= 1e-4


@pytest.mark.slow
def test_a_legacy_export_resolves_module_paths_from_its_node_names(tmp_path):
    """The TorchScript exporter (the route to opsets below 18) records no scopes, only node names such as
    ``/layer3/layer3.1/relu_1/Relu``; ``layer3`` resolves to the block's output, which autograd agrees with."""
    import torch

    from test_torchvision_exactness import CLASSES, _build, _torch_side, relative_error

    model, images = _build("resnet50")
    path = str(tmp_path / "legacy.onnx")
    torch.onnx.export(model, images, path, dynamo=False, opset_version=13, input_names=["input"],
                      dynamic_axes={"input": {0: "batch"}})
    assert model.training is False
    explainer = Explainer(path, layer="layer3", providers="CPUExecutionProvider")
    assert explainer.layers[0].tensor == "/layer3/layer3.5/relu_2/Relu_output_0"
    ours = explainer.gradients(images.numpy(), CLASSES)["layer3"]
    activations, gradient = _torch_side(model, images, "layer3")
    assert relative_error(ours.activations, activations) <= 1e-4
    assert relative_error(ours.gradients, gradient) <= 1e-4
    with pytest.raises(ValueError, match=r"Did you mean .*'layer3',"):
        Explainer(path, layer="layer33")
