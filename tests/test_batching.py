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


@pytest.fixture(scope="module")
def limited_memory():
    """Session options whose sessions allocate from one CPU arena of 8 MiB (ONNX Runtime's environment
    allocator, registered once for this process and used only by sessions that ask for it). It grows by what
    is asked (kSameAsRequested): the default power-of-two growth fragments so small an arena for good."""
    import onnxruntime as ort

    from onnx_gradcam.runtime import default_options

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(8 * 2**20, 1, -1, -1))

    def options():
        chosen = default_options()
        chosen.add_session_config_entry("session.use_env_allocators", "1")
        return chosen

    return options


def test_a_batch_that_cannot_be_allocated_is_halved_for_that_call_only(limited_memory):
    import tiny_cnn

    images = tiny_cnn.images(4096).astype(np.float32)
    explainer = Explainer(tiny_cnn.model(np.float32), layer="B", session_options=limited_memory,
                          providers="CPUExecutionProvider")
    split = explainer(images, 3)
    assert explainer.runs["explainer"] >= 2 and explainer.max_batch is None  # split, and max_batch unchanged
    whole = Explainer(tiny_cnn.model(np.float32), layer="B", providers="CPUExecutionProvider")(images, 3)
    np.testing.assert_allclose(split.cams, whole.cams, atol=1e-6)
    np.testing.assert_array_equal(split.classes, whole.classes)
    runs = explainer.runs["explainer"]
    explainer(images[:16], 3)
    assert explainer.runs["explainer"] == runs + 1  # a small batch afterwards runs whole, in one run
