"""Host-side methods against pytorch-grad-cam on torchvision resnet18 and resnet50 (random weights):
EigenCAM and EigenGradCAM (up to the sign of the singular vector), Score-CAM and Ablation-CAM (same batch
size as the peer). Gradient-free methods are compared with the peer in float32, EigenGradCAM in float64
(float32 torch gradients are not accurate to 1e-3 over deep heads)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from pytorch_grad_cam import AblationCAM, EigenCAM, EigenGradCAM, GradCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from converters.pytorch import export
from onnx_gradcam import Explainer

PEERS = {"eigencam": EigenCAM, "eigengradcam": EigenGradCAM, "scorecam": ScoreCAM, "ablationcam": AblationCAM,
         "gradcam": GradCAM}
BATCH = 64
CLASSES = [3, 7]


@pytest.fixture(scope="module", params=["resnet18", "resnet50"])
def network(request, tmp_path_factory):
    torch.manual_seed(0)
    model = getattr(torchvision.models, request.param)(weights=None).eval()
    images = torch.randn(2, 3, 64, 64)
    path = tmp_path_factory.mktemp(request.param) / f"{request.param}.onnx"
    export(model, images, path)
    return model, images, str(path)


def _peer(method, model, images, eigen_smooth=False):
    if method in ("eigengradcam", "gradcam"):
        model, images = copy.deepcopy(model).double(), images.double()
    with PEERS[method](model=model, target_layers=[model.layer4]) as peer:
        peer.batch_size = BATCH
        return peer(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in CLASSES[:len(images)]],
                    eigen_smooth=eigen_smooth)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ablationcam", "eigencam", "eigengradcam", "scorecam"])
def test_host_method_equals_pytorch_grad_cam(network, method):
    model, images, path = network
    if method == "scorecam" and model.fc.in_features == 2048:
        images = images[:1]  # 2048 masked forward passes per image in the peer: one image is enough
    explainer = Explainer(path, layer="auto", method=method, perturbations_per_run=BATCH)
    ours = explainer(images.numpy(), CLASSES[:len(images)]).cams
    theirs = _peer(method, model, images)
    assert ours.shape == theirs.shape
    assert ours.reshape(len(ours), -1).max(1).min() > 0.99  # real maps, not all zero
    if method.startswith("eigen"):
        # the peer keeps whatever sign the SVD returns; ours is oriented (largest magnitude positive)
        difference = min(np.abs(ours - theirs).max(), np.abs(ours - _flipped_peer(method, model, images)).max())
    else:
        difference = np.abs(ours - theirs).max()
    assert difference <= 1e-3


def _flipped_peer(method, model, images, eigen_smooth=False):
    """The peer's map had its projection the other way round (the same SVD, negated vector)."""
    import pytorch_grad_cam.base_cam as base_module
    import pytorch_grad_cam.eigen_cam as eigen_module
    import pytorch_grad_cam.eigen_grad_cam as eigen_grad_module

    modules = (base_module, eigen_module, eigen_grad_module)
    original = base_module.get_2d_projection

    def negated(values):
        return -original(values)

    for module in modules:
        module.get_2d_projection = negated
    try:
        return _peer(method, model, images, eigen_smooth)
    finally:
        for module in modules:
            module.get_2d_projection = original


@pytest.mark.parametrize("method", ["gradcam", "ablationcam"])
def test_eigen_smooth_equals_pytorch_grad_cam_up_to_sign(network, method):
    model, images, path = network
    images = images[:1]
    ours = Explainer(path, method=method, eigen_smooth=True, perturbations_per_run=BATCH)(images.numpy(), CLASSES[:1]).cams
    plain = Explainer(path, method=method, perturbations_per_run=BATCH)(images.numpy(), CLASSES[:1]).cams
    assert np.abs(ours - plain).max() > 1e-2  # the projection is not the weighted sum
    difference = min(np.abs(ours - _peer(method, model, images, True)).max(),
                     np.abs(ours - _flipped_peer(method, model, images, True)).max())
    assert difference <= 1e-3


def test_ablation_runs_only_the_head(network):
    _, images, path = network
    explainer = Explainer(path, method="ablationcam", perturbations_per_run=BATCH)
    explainer(images.numpy()[:1], 5)
    assert explainer.runs["explainer"] == 1 and explainer.runs["model"] == 0
    assert explainer.runs["head"] == 512 // BATCH or explainer.runs["head"] == 2048 // BATCH
