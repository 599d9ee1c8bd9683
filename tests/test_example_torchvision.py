"""examples/torchvision_model.py runs end to end, and its maps are pytorch-grad-cam's (Grad-CAM, HiResCAM,
XGrad-CAM and LayerCAM; our Grad-CAM++ leaves out pytorch-grad-cam's constant 1e-6, so it is not compared here).

The oracle runs on a float64 copy of the example's own torch model (float32 torch CPU gradients are no oracle
at this tolerance: see test_torchvision_exactness.py), on the input the example preprocessed, for the class
it explained.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from examples.torchvision_model import METHODS, main
from onnx_gradcam.images import IMAGENET_MEAN, IMAGENET_STD

LAYERS = ["layer3", "layer4"]
PEERS = {"gradcam": GradCAM, "hirescam": HiResCAM, "xgradcam": XGradCAM, "layercam": LayerCAM}


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchvision_example")
    return out, main(["--out", str(out), "--size", "112"])


def test_writes_the_model_and_pictures(comparison):
    out, result = comparison
    for name in ("resnet18.onnx", "input.png", "grid.png", "overlay.png"):
        assert (out / name).stat().st_size > 0, name
    assert Image.open(out / "overlay.png").size == (112, 112)
    assert set(result.maps) == {(method, layer) for method in METHODS for layer in LAYERS}
    assert all(cam.shape == (112, 112) and 0 <= cam.min() and cam.max() <= 1 for cam in result.maps.values())


def test_input_follows_the_recorded_imagenet_preprocessing(comparison):
    out, result = comparison
    pixels = np.asarray(Image.open(out / "input.png"), np.float32) / 255
    expected = ((pixels - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)).transpose(2, 0, 1)[None]
    assert result.image.shape == (1, 3, 112, 112)
    assert np.abs(result.image - expected).max() <= 1e-5


@pytest.fixture(scope="module")
def float64_model(comparison):
    return copy.deepcopy(comparison[1].model).double()


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("method", sorted(PEERS))
def test_maps_equal_pytorch_grad_cam(comparison, float64_model, method, layer):
    _, result = comparison
    with PEERS[method](model=float64_model, target_layers=[dict(float64_model.named_modules())[layer]]) as peer:
        theirs = peer(input_tensor=torch.from_numpy(result.image).double(),
                      targets=[ClassifierOutputTarget(result.target)])
    ours = result.maps[(method, layer)]
    assert theirs.shape == (1, *ours.shape)
    assert np.abs(ours - theirs[0]).max() <= 1e-3
