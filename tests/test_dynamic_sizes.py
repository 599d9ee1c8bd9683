"""Models of symbolic height and width, as deployed models come: one Explainer, and one exported explainer
model, serve every image size.

torchvision networks (random weights, eval mode, seed 0) are exported with dynamic batch, height and width.
Gradients from one ``Explainer`` equal float64 ``torch.autograd.grad`` (the oracle of
tests/test_torchvision_exactness.py) at two image sizes, and the ``cam`` of one exported model run on a plain
ONNX Runtime session equals the Explainer's maps at both.
"""

from __future__ import annotations

import copy

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision

from converters.pytorch import export
from onnx_gradcam import Explainer
from test_torchvision_exactness import CLASSES, REL_TOL, _torch_side, relative_error

pytestmark = pytest.mark.slow

# arch: (module whose output the default layer is, a layer inside a block)
ARCHS = {
    "resnet50": ("layer4", "layer3.1.conv2"),
    "mobilenet_v3_large": ("features", "features.12.block.0"),
    "convnext_tiny": ("features", "features.5.3.block"),
}
SIZES = [(224, 224), (320, 256)]


@pytest.fixture(scope="module", params=sorted(ARCHS))
def exported(request, tmp_path_factory):
    arch = request.param
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    images = {size: torch.randn(2, 3, *size) for size in SIZES}
    path = tmp_path_factory.mktemp(arch) / f"{arch}.onnx"
    export(model, images[SIZES[0]], path, layers=[ARCHS[arch][1]], dynamic_size=True)
    return arch, model, images, path


def test_the_export_has_symbolic_sizes(exported):
    _, _, _, path = exported
    (image,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()
    assert image.shape == ["batch", 3, "height", "width"]


@pytest.mark.parametrize("which", ["default", "inner"])
def test_gradients_equal_autograd_at_every_size(exported, which):
    arch, model, images, path = exported
    module_name = ARCHS[arch][0] if which == "default" else ARCHS[arch][1]
    explainer = Explainer(path, layer="auto" if which == "default" else module_name,
                          providers="CPUExecutionProvider")
    for size in SIZES:
        (ours,) = explainer.gradients(images[size].numpy(), CLASSES).values()
        activations, grad = _torch_side(model, images[size], module_name)
        assert ours.gradients.shape == grad.shape
        assert relative_error(ours.activations, activations) <= REL_TOL, f"activations at {size}"
        assert relative_error(ours.gradients, grad) <= REL_TOL, f"gradients at {size}"


def test_one_exported_model_explains_every_size(exported, tmp_path):
    _, _, images, path = exported
    explainer = Explainer(path, providers="CPUExecutionProvider")
    explainer.export(str(tmp_path / "explainer.onnx"), targets="input")
    session = ort.InferenceSession(str(tmp_path / "explainer.onnx"), providers=["CPUExecutionProvider"])
    for size in SIZES:
        batch = images[size].numpy()
        (cam,) = session.run(["cam"], {"input": batch, "target_class": np.array(CLASSES, np.int64)})
        assert cam.shape == (2, *size)
        np.testing.assert_allclose(cam, explainer(batch, CLASSES).cams, rtol=0, atol=1e-5)


def test_a_segmenter_of_symbolic_size_explains_a_class_over_a_mask_at_every_size(tmp_path):
    """fcn_resnet50 exported with dynamic height and width: a Mask target at the size the output has for each
    batch (its size is symbolic) gives gradients equal to float64 autograd of the same masked class score."""
    from onnx_gradcam import Mask

    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None,
                                                         aux_loss=False).eval()
    path = tmp_path / "fcn.onnx"
    export(model, torch.randn(1, 3, 128, 128), path, dynamic_size=True)
    explainer = Explainer(path, layer="backbone.layer4", output="out", providers="CPUExecutionProvider")
    wide = copy.deepcopy(model).double()
    for height, width in [(128, 128), (160, 96)]:
        images = torch.randn(1, 3, height, width)
        mask = np.zeros((height, width), np.float32)
        mask[height // 4:height // 2, width // 4:width // 2] = 1
        ours = explainer.gradients(images.numpy(), [Mask(3, mask)])["backbone.layer4"]
        captured = {}
        hook = dict(wide.named_modules())["backbone.layer4"].register_forward_hook(
            lambda module, inputs, output: captured.setdefault("layer", output))
        try:
            score = (wide(images.double())["out"][0, 3] * torch.from_numpy(mask).double()).sum()
        finally:
            hook.remove()
        (gradient,) = torch.autograd.grad(score, captured["layer"])
        assert relative_error(ours.gradients, gradient.numpy()) <= REL_TOL, f"at {height}x{width}"


def test_swin_t_cannot_have_dynamic_sizes_and_the_export_says_why(tmp_path):
    """torchvision's swin_t picks its window shift by comparing the window with the padded feature map (at
    224x224 the last stage is 7x7: shift 0; at 320x256 it is padded to 14x14: shift 3), so no one graph is right
    at both sizes; torch.export fixes the sizes, and the converter refuses to write that as a dynamic model."""
    torch.manual_seed(0)
    model = torchvision.models.swin_t(weights=None).eval()
    path = tmp_path / "swin_t.onnx"
    with pytest.raises(ValueError, match=r"fixed axes \[.*2, 3\] of input 'input' to the example's sizes"):
        export(model, torch.randn(1, 3, *SIZES[0]), path, dynamic_size=True)
    assert not path.exists()
