"""Batches split transparently, and aug_smooth, against pytorch-grad-cam."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from onnx_gradcam import Explainer


@pytest.mark.parametrize("method", ["gradcam", "eigencam"])
def test_a_batch_split_in_chunks_gives_the_same_maps(resnet, method):
    _, images, path = resnet
    classes = [1, 2, 3, 4, 5, 6, 7, 8]
    whole = Explainer(path, method=method)(images.numpy(), classes)
    chunked_explainer = Explainer(path, method=method, max_batch=3)
    chunked = chunked_explainer(images.numpy(), classes)
    assert chunked_explainer.runs["explainer"] == 3  # 3 + 3 + 2
    np.testing.assert_allclose(chunked.cams, whole.cams, atol=1e-6)
    np.testing.assert_allclose(chunked.outputs["output"], whole.outputs["output"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(chunked.classes, whole.classes)


def test_aug_smooth_equals_pytorch_grad_cam(resnet):
    model, images, path = resnet
    images = images[:2]
    ours = Explainer(path)(images.numpy(), [3, 7], aug_smooth=True).cams
    peer_model = copy.deepcopy(model).double()
    with GradCAM(model=peer_model, target_layers=[peer_model.layer4]) as peer:
        theirs = peer(input_tensor=images.double(), targets=[ClassifierOutputTarget(c) for c in (3, 7)],
                      aug_smooth=True)
    assert np.abs(ours - theirs).max() <= 1e-3
    plain = Explainer(path)(images.numpy(), [3, 7]).cams
    assert np.abs(ours - plain).max() > 1e-2  # the smoothing changed something
