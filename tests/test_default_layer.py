"""Which layer ``layer="auto"`` picks on dense-prediction models, and why it is the right one: the deepest,
lowest-resolution feature map that the output does not merely re-arrange (onnx_gradcam/graph/default_layer.py).
For classifiers it stays the last candidate (tests/test_torchvision_exactness.py checks those)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torchvision

import deployed_models
from converters.pytorch import export
from onnx_gradcam import Explainer, default_layer, list_layers
from onnx_gradcam.graph.default_layer import _probe_shapes


def _segmenter(name: str, tmp_path) -> str:
    torch.manual_seed(0)
    model = getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None,
                                                           aux_loss=False).eval()
    path = str(tmp_path / f"{name}.onnx")
    export(model, torch.randn(1, 3, 128, 128), path)
    return path


def _with_symbolic_image_size(path: str, tmp_path) -> str:
    model = onnx.load(path)
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], ("height", "width")):
        dim.dim_param = name
    del model.graph.value_info[:]
    symbolic = str(tmp_path / "symbolic.onnx")
    onnx.save(model, symbolic)
    return symbolic


@pytest.mark.slow
@pytest.mark.parametrize("name, expected, stride", [("fcn_resnet50", "classifier.2", 8),
                                                    ("deeplabv3_mobilenet_v3_large", "classifier.3", 16)])
def test_segmenters_explain_the_features_their_pixel_classifier_reads(name, expected, stride, tmp_path):
    """FCN's and DeepLab's heads end in a 1x1 Conv to the classes, then a Resize to the image: the
    last candidates are that Conv's output and the output itself, whose Grad-CAM for a class over a mask is
    the mask again. ``auto`` picks the ReLU the 1x1 classifier reads, at the backbone's output stride."""
    path = _segmenter(name, tmp_path)
    chosen = default_layer(path, "out")
    assert chosen.name == expected and chosen.shape[2:] == (128 // stride, 128 // stride)
    candidates = list_layers(path, "out")
    assert candidates[-1].tensor != chosen.tensor and chosen.shape[1] != 21
    assert min(c.shape[2] * c.shape[3] for c in candidates) == chosen.shape[2] * chosen.shape[3]
    assert Explainer(path, output="out").layers[0].tensor == chosen.tensor
    symbolic = _with_symbolic_image_size(path, tmp_path)
    assert default_layer(symbolic, "out").tensor == chosen.tensor  # sizes from the probe


def test_an_ocr_text_detector_explains_the_deepest_level_of_its_feature_pyramid():
    """PP-OCRv4's DB detector (symbolic height and width): its backbone and pyramid go down to 1/32 of the
    image, then the pyramid upsamples and fuses, and the head upsamples twice more with ConvTranspose to a
    sigmoid text map at full size. ``auto`` is the last tensor at 1/32, the pyramid's deepest level (24
    channels), never the sigmoid map or the ConvTranspose before it."""
    path = deployed_models.model_path("ocr_detector")
    chosen = default_layer(path)
    probed = _probe_shapes(onnx.load(path))
    assert probed[chosen.tensor][2:] == [256 // 32, 256 // 32] and probed[chosen.tensor][1] == 24
    assert chosen.tensor == "p2o.Add.259"
    later = [c for c in list_layers(path)][-3:]
    assert chosen.tensor not in {c.tensor for c in later}
    assert not any(c.shape[1] == 1 for c in [chosen]) and all(
        isinstance(d, str) or d is None for d in chosen.shape[2:])


def test_a_yolox_detector_explains_the_coarsest_features_every_level_reads():
    """ddddocr's YOLOX detector (416x416, levels at strides 8, 16 and 32: 52x52 + 26x26 + 13x13 = 3549 anchors).
    Its stride-32 head branch is at the lowest resolution too, but reaches only the 169 coarsest anchors: a
    target on a stride-8 anchor gets an all-zero gradient there. ``auto`` is the 13x13 map the neck upsamples
    for the finer levels ('662', read by a Resize), which every anchor depends on."""
    path = deployed_models.model_path("yolox_detector")
    chosen = default_layer(path)
    assert chosen.tensor == "662" and chosen.shape == (1, 192, 13, 13)
    view = Explainer(path, providers="CPUExecutionProvider").subject.view
    assert any(node.op_type == "Resize" for node in view.consumers[chosen.tensor])
    image = np.random.default_rng(0).uniform(0, 1, (1, 3, 416, 416)).astype(np.float32)
    explainer = Explainer(path, providers="CPUExecutionProvider")
    for anchor in (0, 2704, 3548):  # one anchor of each level: strides 8, 16, 32
        seed = np.zeros((1, 3549, 6), np.float32)
        seed[0, anchor, 5] = 1.0
        (found,) = explainer.gradients({"images": image}, seed).values()
        assert np.abs(found.gradients).max() > 0, anchor


def test_the_command_line_marks_the_default(capsys):
    from onnx_gradcam.cli import main

    path = deployed_models.model_path("ocr_detector")
    assert main(["layers", path]) == 0
    printed = capsys.readouterr().out
    marked = [line for line in printed.splitlines() if line.startswith("*")]
    assert len(marked) == 2 and "p2o.Add.259" in marked[0] and marked[1] == "* default (layer='auto'): p2o.Add.259"


def test_weights_in_constant_nodes_are_no_candidates():
    path = deployed_models.model_path("ocr_detector")
    model = onnx.load(path)
    constants = {n.output[0] for n in model.graph.node if n.op_type == "Constant"}
    assert constants, "the detector keeps its weights in Constant nodes"
    assert not constants & {c.tensor for c in list_layers(path)}
