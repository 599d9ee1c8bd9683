"""The CAM family against pytorch-grad-cam 1.5.7 (the peer), on torchvision resnet18 and resnet50 (random
weights, 2 images of 3x160x160) and on a small network whose explained layers are channels-last (NHWC).

In-graph methods: ``Explainer(method=...)`` maps equal the peer's class for the same method, layer and
``ClassifierOutputTarget`` classes within 1e-3 after both are normalised (measured: <= 1.8e-6, and 5.7e-6
for XGrad-CAM at resnet18's signed layer), at up to three layers per network: ``layer4`` (the default),
``layer3``, and the last conv of a block inside layer3, whose activations are signed. All three are needed: at
``layer4`` the gradient is constant over space (global average pool, then the linear layer), so there
HiResCAM = XGrad-CAM = Grad-CAM; after a ReLU (``layer3``) activations are >= 0, so Grad-CAM element-wise =
LayerCAM. ``test_every_method_is_told_apart_from_every_other`` shows each pair differs where both are compared.

The peer runs on a float64 copy of the model: torch's float32 gradients differ from float64 by up to ~3e-3
relative over these heads, ours by ~1e-6 (see test_torchvision_exactness.py).

Peer quirks, and how they are handled:

* Grad-CAM++: the peer adds a constant 1e-6 to alpha's denominator 2 g^2 + S g^3 (S: the channel's
  activation sum). The paper has no such term, and it is not scale-free: logit gradients here are ~1e-3, so
  g^2 ~ 1e-6 and the constant moves alpha by tens of percent, unevenly (measured, ours vs the peer as it is:
  0.032 / 0.047 at resnet18 / resnet50 layer4, 0.10 at the NHWC layer). We follow the paper, and compare
  with the peer run on the same network with the explained module's output divided by k = 2^16 and
  multiplied back right after it. Powers of two scale exactly in floating point, so the network computes
  what it did; the peer's hooked tensor is A / k and its gradient k g, so its alpha becomes
  g^2 / (2 g^2 + S g^3 + 1e-6 / k^2): its own code, with the constant made negligible. (Grad-CAM++ is
  otherwise invariant under this rescaling; XGrad-CAM's epsilon is not, so only Grad-CAM++ uses it.)
  ``test_gradcam_plusplus_epsilon_is_the_whole_difference_from_the_peer`` checks both halves of this.
* XGrad-CAM: the peer adds 1e-7 to each channel's activation sum. At post-ReLU layers the sum is about zero
  only where the channel is, which then contributes nothing; matched (harmless).
* Grad-CAM++ and XGrad-CAM at layers with signed activations: not a quirk of the peer but of the formulas,
  which the papers state for post-ReLU activations. Both use S, which signed activations can cancel to
  about zero (XGrad-CAM divides by it; Grad-CAM++'s alpha = 1 / (2 + S g) has a pole at S g = -2 and
  changes sign past it). At resnet50's layer3.1.conv3, |S| is 4e-4 of sum|A| for one channel and 2 + S g
  comes within 4e-4 of the pole, so the maps amplify their inputs' rounding about 1000-fold: the float64
  formula applied to our activations and gradients (1e-6 from float64's) is itself 1.05e-3 from the peer
  (ours 9.7e-4; XGrad-CAM 3.8e-4). At 1e-3 that compares rounding, not methods, so these two are compared at
  the post-ReLU layers only (and, on the small NHWC network, where no such cancellation occurs, at both).
* EigenCAM / EigenGradCAM: the peer's sign is whatever the SVD returns (here, inverted for 13 of 16 maps).
  Ours is oriented (largest-magnitude value positive: the peer's own
  ``get_2d_projection_with_sign_correction``); compared up to sign with ``get_2d_projection`` and exactly
  with the sign-corrected function.

Random weights favour one class for all images, and a low-scoring class's Grad-CAM is often negative
everywhere, i.e. all zero after the ReLU; every comparison asserts that the peer's maps are not flat.

Runtime: about 130-150 s on 2 shared CPU cores, nearly all in the resnet tests (marked slow); the rest about 6 s.
"""

from __future__ import annotations

import copy
import itertools
from typing import Sequence

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from pytorch_grad_cam import GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import (get_2d_projection,
                                                        get_2d_projection_with_sign_correction)

from converters.pytorch import export
from onnx_gradcam import Explainer
from onnx_gradcam.methods.eigen import eigencam, eigengradcam, project_2d

PEERS = {
    "gradcam": GradCAM,
    "hirescam": HiResCAM,
    "gradcam-elementwise": GradCAMElementWise,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
}
# arch: the last conv of a block in layer3, whose output (signed) meets the residual Add before the ReLU, so
# its gradient is not zero where it is negative (inside a bottleneck, conv2's is: bn2 and a ReLU follow it).
SIGNED_LAYER = {"resnet18": "layer3.0.conv2", "resnet50": "layer3.1.conv3"}
# Grad-CAM++ and XGrad-CAM use each channel's activation sum S; see the module docstring for why they are not
# compared at the signed layer.
USES_CHANNEL_SUMS = {"gradcam++", "xgradcam"}
CASES = [(method, depth) for method in sorted(PEERS) for depth in ("layer4", "layer3", "signed")
         if not (depth == "signed" and method in USES_CHANNEL_SUMS)]
TOLERANCE = 1e-3
PLUSPLUS_SCALE = 2.0 ** 16


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def with_scaled_output(model: nn.Module, name: str, k: float) -> tuple[nn.Module, nn.Module]:
    """A copy of ``model`` in which module ``name``'s output is divided by ``k`` and multiplied back; returns
    it and the dividing module, whose output (A / k, gradient k * dA) is the one to hook."""
    model = copy.deepcopy(model)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    down = Scale(1.0 / k)
    setattr(parent, child, nn.Sequential(getattr(parent, child), down, Scale(k)))
    return model, down


def peer_cams(method: str, model: nn.Module, images: torch.Tensor, layer: str, classes: Sequence[int],
              plusplus_scale: float = PLUSPLUS_SCALE, reshape_transform=None) -> np.ndarray:
    """The peer's maps for ``method`` at module ``layer``; ``model`` and ``images`` are float64 (the peer
    removes its hooks on leaving the ``with``, so one float64 copy serves every call)."""
    if method == "gradcam++" and plusplus_scale != 1:
        model, module = with_scaled_output(model, layer, plusplus_scale)
    else:
        module = model.get_submodule(layer)
    with PEERS[method](model=model, target_layers=[module], reshape_transform=reshape_transform) as peer:
        return peer(input_tensor=images, targets=[ClassifierOutputTarget(c) for c in classes])


def assert_not_flat(maps: np.ndarray):
    """Each normalised map spans [0, 1]: no comparison passes because both maps are all zero (a method whose
    weighted sum is negative everywhere, which ReLU zeroes, as Grad-CAM for a random network's low logits)."""
    assert (maps.max(axis=(1, 2)) - maps.min(axis=(1, 2)) > 0.5).all()


def normalised_difference(ours: np.ndarray, theirs: np.ndarray) -> float:
    """Max abs difference after per-image min-max normalisation (both are normalised already; this
    re-normalises so that the comparison does not rest on that)."""
    def norm(maps):
        low = maps.min(axis=(1, 2), keepdims=True)
        return (maps - low) / (maps.max(axis=(1, 2), keepdims=True) - low + 1e-7)
    return float(np.abs(norm(ours) - norm(theirs)).max())


# --- torchvision resnets -------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=sorted(SIGNED_LAYER))
def resnet(request, tmp_path_factory):
    arch = request.param
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    images = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp(arch) / f"{arch}.onnx"
    export(model, images, path, layers=["layer3", SIGNED_LAYER[arch]])
    # Random weights favour one class for every image, and Grad-CAM for a low-scoring class is often negative
    # everywhere (an all-zero map, a vacuous comparison): explain the first image's top class and the second
    # image's runner-up, which gives every method a map here (asserted by assert_not_flat).
    with torch.no_grad():
        ranked = model(images).argsort(dim=1, descending=True)
    classes = [int(ranked[0, 0]), int(ranked[1, 1])]
    return arch, images, str(path), classes, (copy.deepcopy(model).double(), images.double())


def resnet_layer(arch: str, depth: str) -> tuple[str, str]:
    """(Explainer layer spec, peer module name) of the layer called ``depth``."""
    return {"layer4": ("auto", "layer4"), "layer3": ("layer3", "layer3"),
            "signed": (SIGNED_LAYER[arch], SIGNED_LAYER[arch])}[depth]


@pytest.mark.slow
@pytest.mark.parametrize("method, depth", CASES)
def test_method_equals_pytorch_grad_cam(resnet, method, depth):
    arch, images, path, classes, float64 = resnet
    spec, module = resnet_layer(arch, depth)
    ours = Explainer(path, layer=spec, method=method, providers="CPUExecutionProvider")(images.numpy(), classes)
    theirs = peer_cams(method, *float64, module, classes)
    assert ours.cams.shape == theirs.shape == (2, 160, 160)
    assert_not_flat(theirs)
    assert normalised_difference(ours.cams, theirs) <= TOLERANCE


@pytest.mark.slow
def test_every_method_is_told_apart_from_every_other(resnet):
    """For every pair of methods there is a layer where both are compared with the peer and their maps
    differ visibly, so each comparison pins its own method (one computed as another would fail)."""
    arch, images, path, classes, _ = resnet
    maps = {(method, depth): Explainer(path, layer=resnet_layer(arch, depth)[0], method=method,
                                       providers="CPUExecutionProvider")(images.numpy(), classes).cams
            for method, depth in CASES if depth != "layer4"}
    for first, second in itertools.combinations(sorted(PEERS), 2):
        differences = [normalised_difference(maps[first, depth], maps[second, depth])
                       for depth in ("layer3", "signed") if (first, depth) in maps and (second, depth) in maps]
        assert max(differences) > 0.05, (first, second, differences)


@pytest.mark.slow
def test_gradcam_plusplus_epsilon_is_the_whole_difference_from_the_peer(resnet):
    """The peer as it is differs from the paper's Grad-CAM++ by far more than the tolerance at the default
    layer; shrinking its constant (the rescaled copy, see the module docstring) removes the difference."""
    _, images, path, classes, float64 = resnet
    ours = Explainer(path, method="gradcam++", providers="CPUExecutionProvider")(images.numpy(), classes).cams
    as_is = peer_cams("gradcam++", *float64, "layer4", classes, plusplus_scale=1)
    rescaled = peer_cams("gradcam++", *float64, "layer4", classes)
    assert normalised_difference(ours, as_is) > 10 * TOLERANCE
    assert normalised_difference(ours, rescaled) <= TOLERANCE


# --- channels-last layers ------------------------------------------------------------------------------------
class ChannelsLastNet(nn.Module):
    """conv -> NHWC -> LayerNorm -> Linear ("mix": signed, its gradient through GELU nonzero where it is
    negative) -> GELU -> Linear -> ReLU ("act": >= 0) -> NCHW -> MaxPool -> conv -> ReLU -> pooled
    classifier. Both explained layers are NHWC, and the gradient at each varies over space; at "act" it is
    exactly zero off the pool's maxima (Grad-CAM++'s 0/0 case)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.mix = nn.Linear(8, 12)
        self.proj = nn.Linear(12, 10)
        self.act = nn.ReLU()
        self.out = nn.Conv2d(10, 6, 3, padding=1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        y = torch.relu(self.stem(x)).permute(0, 2, 3, 1)
        y = self.act(self.proj(nn.functional.gelu(self.mix(self.norm(y))))).permute(0, 3, 1, 2)
        y = nn.functional.max_pool2d(y, 2)
        return self.fc(torch.relu(self.out(y)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def channels_last(tmp_path_factory):
    torch.manual_seed(0)
    model = ChannelsLastNet().eval()
    images = torch.randn(2, 3, 12, 14, generator=torch.Generator().manual_seed(2))
    path = tmp_path_factory.mktemp("channels_last") / "channels_last.onnx"
    export(model, images, path)
    return images, str(path), (copy.deepcopy(model).double(), images.double())


@pytest.mark.parametrize("method, layer", [(method, "mix" if depth == "signed" else "act")
                                          for method, depth in CASES if depth != "layer4"])
def test_nhwc_layer_method_equals_pytorch_grad_cam(channels_last, method, layer):
    images, path, float64 = channels_last
    explainer = Explainer(path, layer=layer, method=method, providers="CPUExecutionProvider")
    assert explainer.layers[0].layout == "NHWC"
    ours = explainer(images.numpy(), [1, 4])
    theirs = peer_cams(method, *float64, layer, [1, 4], reshape_transform=lambda t: t.permute(0, 3, 1, 2))
    assert ours.raw[layer].shape == (2, 12, 14)
    assert_not_flat(theirs)
    assert normalised_difference(ours.cams, theirs) <= TOLERANCE


def test_gradcam_plusplus_alpha_is_zero_not_nan_where_the_gradient_is_zero(channels_last):
    images, path, _ = channels_last
    explainer = Explainer(path, layer="act", method="gradcam++", providers="CPUExecutionProvider")
    gradients = explainer.gradients(images.numpy(), [1, 4])["act"].gradients
    assert (gradients == 0).mean() > 0.5  # the 2x2 max pool passes gradient to one position in four
    raw = explainer(images.numpy(), [1, 4]).raw["act"]
    assert np.isfinite(raw).all() and (raw.max(axis=(1, 2)) > 0).all()


# --- EigenCAM, EigenGradCAM --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def layer_values(resnet):
    """(activations, gradients) at layer4 and layer3, from Explainer.gradients."""
    _, images, path, classes, _ = resnet
    explainer = Explainer(path, layer=["auto", "layer3"], providers="CPUExecutionProvider")
    return [(g.activations, g.gradients) for g in explainer.gradients(images.numpy(), classes).values()]


def assert_equal_up_to_sign(ours: np.ndarray, theirs: np.ndarray):
    """Per image, ``ours`` is ``theirs`` or ``-theirs``, within 1e-5 of the map's largest magnitude."""
    for mine, peer in zip(ours, theirs):
        scale = np.abs(peer).max()
        assert scale > 0
        closest = min(np.abs(mine - peer).max(), np.abs(mine + peer).max())
        assert closest <= 1e-5 * scale


@pytest.fixture(scope="module")
def peer_projections(layer_values):
    """Per layer and for (activations, gradients * activations): the values, and the peer's projection as it
    is and sign-corrected, on float64 copies (the peer's full-matrix SVDs are the slow part: computed once)."""
    result = []
    for activations, gradients in layer_values:
        for values in (activations, gradients * activations):
            as_float64 = values.astype(np.float64)
            result.append((values, get_2d_projection(as_float64),
                           get_2d_projection_with_sign_correction(as_float64)))
    return result


@pytest.mark.slow
def test_project_2d_equals_the_peer_up_to_sign_and_its_sign_corrected_projection(peer_projections):
    for values, peer, corrected in peer_projections:
        ours = project_2d(values)
        assert ours.shape == (2, *values.shape[2:]) and ours.dtype == np.float32
        assert_equal_up_to_sign(ours, peer)
        np.testing.assert_allclose(ours, corrected, rtol=0, atol=1e-5 * np.abs(corrected).max())


@pytest.mark.slow
def test_eigencam_and_eigengradcam_are_the_relu_of_the_oriented_projection(layer_values, peer_projections):
    ours = [map_ for activations, gradients in layer_values
            for map_ in (eigencam(activations), eigengradcam(activations, gradients))]
    for mine, (_, _, corrected) in zip(ours, peer_projections, strict=True):
        expected = np.maximum(corrected, 0)
        np.testing.assert_allclose(mine, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
        assert (mine.max(axis=(1, 2)) > 0).all()  # oriented: never the all-zero map of an inverted sign


@pytest.mark.slow
def test_projection_sign_is_deterministic(layer_values):
    """The orientation does not depend on what the SVD happens to return: negated inputs, permuted
    channels and single-image batches (each a different LAPACK problem) give the same maps."""
    rng = np.random.default_rng(0)
    for activations, gradients in layer_values:
        for values in (activations, gradients * activations):
            maps = project_2d(values)
            scale = np.abs(maps).max()
            assert (maps.max(axis=(1, 2)) >= -maps.min(axis=(1, 2))).all()
            for other in (project_2d(-values),
                          project_2d(values[:, rng.permutation(values.shape[1])]),
                          np.concatenate([project_2d(values[i:i + 1]) for i in range(len(values))])):
                np.testing.assert_allclose(other, maps, rtol=0, atol=1e-5 * scale)


def test_eigen_inputs_are_checked():
    with pytest.raises(ValueError, match="NCHW"):
        project_2d(np.zeros((2, 5, 5)))
    with pytest.raises(ValueError, match="one shape"):
        eigengradcam(np.zeros((1, 3, 4, 4)), np.zeros((1, 3, 4, 5)))
