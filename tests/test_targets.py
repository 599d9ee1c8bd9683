"""Targets (probabilities, segmentation masks, detections, several classes per image) and token activations,
each against torch autograd or pytorch-grad-cam in float64."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget, SemanticSegmentationTarget

from converters.pytorch import export
from onnx_gradcam import Detection, Explainer, Mask, Probability, TokenGrid


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def autograd_at(model, images, module, score):
    """(activations, d score(outputs) / d activations) of ``module``'s output, in float64."""
    model, images = copy.deepcopy(model).double(), images.double()
    module = dict(model.named_modules())[module]
    captured = {}
    handle = module.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    outputs = model(images)
    handle.remove()
    (grad,) = torch.autograd.grad(score(outputs), captured["a"])
    return captured["a"].detach().numpy(), grad.numpy()


def test_probability_target_equals_autograd_of_the_softmax(resnet):
    model, images, path = resnet
    classes = [1, 5, 9, 3, 0, 2, 7, 4]
    ours = Explainer(path, layer="layer4").gradients(images.numpy(), [Probability(c) for c in classes])["layer4"]
    _, expected = autograd_at(model, images, "layer4",
                              lambda out: out.softmax(1)[torch.arange(8), torch.tensor(classes)].sum())
    assert rel(ours.gradients, expected) < 1e-4


def test_batch_of_eight_classes_equals_eight_single_calls(resnet):
    _, images, path = resnet
    explainer = Explainer(path)
    classes = [11, 22, 33, 44, 55, 66, 77, 88]
    batch = explainer(images.numpy(), classes).cams
    for i, c in enumerate(classes):
        np.testing.assert_allclose(batch[i], explainer(images.numpy()[i:i + 1], c).cams[0], atol=1e-5)


def test_three_classes_for_one_image_run_the_body_once(resnet):
    _, images, path = resnet
    explainer = Explainer(path, layer="layer3")
    image = images.numpy()[:1]
    result = explainer(image, [[3, 30, 300]])
    assert result.cams.shape == (1, 3, 64, 64)
    assert explainer.runs["body"] == 1 and explainer.runs["head"] == 1 and explainer.runs["explainer"] == 0
    for k, c in enumerate([3, 30, 300]):
        np.testing.assert_allclose(result.cams[0, k], explainer(image, c).cams[0], atol=1e-5)
    assert explainer.runs["body"] == 1  # the single-class calls ran the whole explainer model instead


class _Segmenter(nn.Module):
    """torchvision's segmentation models return {"out": ...}; pytorch-grad-cam wants the tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["out"]


@pytest.mark.slow
def test_mask_target_equals_pytorch_grad_cams_semantic_segmentation_target(tmp_path):
    torch.manual_seed(0)
    model = _Segmenter(torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None)).eval()
    images = torch.randn(2, 3, 96, 96)
    path = tmp_path / "fcn.onnx"
    export(model, images, path, layers=["model.backbone.layer4"])
    mask = np.zeros((96, 96), np.float32)
    mask[20:70, 30:80] = 1.0
    category = 7
    explainer = Explainer(str(path), layer="model.backbone.layer4")
    ours = explainer.gradients(images.numpy(), Mask(category, mask))["model.backbone.layer4"]
    peer_target = SemanticSegmentationTarget(category, mask)
    _, expected = autograd_at(model, images, "model.backbone.layer4",
                              lambda out: sum(peer_target(o) for o in out))
    assert rel(ours.gradients, expected) < 1e-4


class _TinyYolo(nn.Module):
    """A YOLO-style raw head: (N, 4 + classes, anchors) (``boxes_last``) or (N, anchors, 5 + classes)."""

    def __init__(self, boxes_last: bool, classes: int = 3):
        super().__init__()
        self.boxes_last = boxes_last
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU())
        self.head = nn.Conv2d(16, (4 if boxes_last else 5) + classes, 1)

    def forward(self, x):
        raw = self.head(self.backbone(x)).flatten(2)  # (N, rows, anchors)
        return raw.sigmoid() if self.boxes_last else raw.transpose(1, 2).sigmoid()


@pytest.mark.parametrize("layout", ["boxes_last", "boxes_first"])
def test_detection_target_equals_autograd(layout, tmp_path):
    torch.manual_seed(0)
    model = _TinyYolo(layout == "boxes_last").eval()
    images = torch.randn(2, 3, 16, 16)
    path = tmp_path / "yolo.onnx"
    export(model, images, path, layers=["backbone"])
    targets = [Detection(2, anchor=17, layout=layout), Detection(0, anchor=40, layout=layout)]
    ours = Explainer(str(path), layer="backbone").gradients(images.numpy(), targets)["backbone"]

    def score(out):
        if layout == "boxes_last":
            return out[0, 4 + 2, 17] + out[1, 4 + 0, 40]
        return out[0, 17, 5 + 2] + out[1, 40, 5 + 0]

    _, expected = autograd_at(model, images, "backbone", score)
    assert np.count_nonzero(expected) > 0
    assert rel(ours.gradients, expected) < 1e-5


@pytest.mark.slow
def test_vit_tokens_equal_pytorch_grad_cam_with_its_reshape_transform(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=64).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the head: no gradient
    images = torch.randn(2, 3, 64, 64)
    layer = "encoder.layers.encoder_layer_11.ln_1"
    path = tmp_path / "vit.onnx"
    export(model, images, path, layers=[layer])
    ours = Explainer(str(path), layer=layer, tokens=TokenGrid(4, 4, skip=1))(images.numpy(), [3, 7]).cams

    def reshape_transform(tensor, height=4, width=4):
        result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    peer_model = copy.deepcopy(model).double()
    target_layer = dict(peer_model.named_modules())[layer]
    with GradCAM(model=peer_model, target_layers=[target_layer], reshape_transform=reshape_transform) as peer:
        theirs = peer(input_tensor=images.double(), targets=[ClassifierOutputTarget(c) for c in (3, 7)])
    assert ours.max() > 0.99
    assert np.abs(ours - theirs).max() <= 1e-3
