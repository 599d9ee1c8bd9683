"""examples/segmentation.py runs end to end, and what it computes on ONNX Runtime for a ``Mask`` target is what
torch computes for the same target on the example's own trained model: the gradient of sum(scores[:, class] *
region) at the encoder (torch.autograd), and the Grad-CAM map (pytorch-grad-cam's SemanticSegmentationTarget).

The oracles run on a float64 copy of the trained model (float32 torch CPU gradients are no oracle at these
tolerances: see test_torchvision_exactness.py).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

from examples.segmentation import LABELS, LAYER, main
from onnx_gradcam import Explainer, Mask

PICTURES = 3
TEST = 60


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("segmentation_example")
    # The example's own training: with less (1200 scenes, 4 epochs) the model is poor (mean IoU 0.38).
    return out, main(["--out", str(out), "--test", str(TEST), "--pictures", str(PICTURES)])


@pytest.fixture(scope="module")
def float64_model(run):
    return copy.deepcopy(run[1].model).double().eval()


def found(result, label: int):
    """The held-out images where the model found ``label``, and the regions it gave that class."""
    predicted = result.predicted
    images = np.flatnonzero((predicted == label).any(axis=(1, 2)))
    return images, predicted[images] == label


@pytest.mark.slow
def test_writes_the_model_and_pictures_and_the_maps_peak_on_their_class(run):
    out, result = run
    assert (out / "shapes_segmenter.onnx").is_file()
    grids = sorted(out.glob("*_grid.png"))
    assert len(grids) == PICTURES
    for i in range(PICTURES):
        classes = [LABELS[c] for c in range(1, len(LABELS)) if (result.predicted[i] == c).any()]
        assert sorted(path.name for path in out.glob(f"{i:03d}_*.png")) == sorted(
            [f"{i:03d}_grid.png"] + [f"{i:03d}_{name}.png" for name in classes])
        assert Image.open(out / f"{i:03d}_grid.png").width == 192 * (1 + len(classes))
    assert result.cams.shape == (TEST, len(LABELS), 64, 64)
    assert result.quality >= 0.9  # measured 0.98 with these settings


@pytest.mark.slow
@pytest.mark.parametrize("label", range(1, len(LABELS)), ids=LABELS[1:])
def test_mask_target_gradient_is_torch_autograd(run, float64_model, label):
    _, result = run
    rows, regions = found(result, label)
    explainer = Explainer(result.model_path, layer=LAYER)
    ours = explainer.gradients(result.images[rows], [Mask(label, region) for region in regions])[LAYER]

    captured = {}
    hook = float64_model.encoder.register_forward_hook(lambda module, inputs, output: captured.update(a=output))
    try:
        scores = float64_model(torch.from_numpy(result.images[rows]).double())
    finally:
        hook.remove()
    score = (scores[:, label] * torch.from_numpy(regions).double()).sum()
    (theirs,) = torch.autograd.grad(score, captured["a"])

    assert np.abs(ours.activations - captured["a"].detach().numpy()).max() <= 1e-4
    error = np.linalg.norm(ours.gradients - theirs.numpy()) / np.linalg.norm(theirs.numpy())
    assert error <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("label", range(1, len(LABELS)), ids=LABELS[1:])
def test_maps_are_pytorch_grad_cams_semantic_segmentation_target(run, float64_model, label):
    _, result = run
    rows, regions = found(result, label)
    with GradCAM(model=float64_model, target_layers=[float64_model.encoder]) as peer:
        theirs = peer(input_tensor=torch.from_numpy(result.images[rows]).double(),
                      targets=[SemanticSegmentationTarget(label, region.astype(np.float64)) for region in regions])
    assert np.abs(result.cams[rows, label] - theirs).max() <= 1e-4
