"""Bad input is one clear line, raised before ONNX Runtime sees it, never a silent wrong map."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import tiny_cnn
from onnx_gradcam import Detection, Explainer, Mask


def _one_line_error(call, *fragments):
    with pytest.raises(ValueError) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message and all(f in message for f in fragments), message


@pytest.fixture(scope="module")
def tiny():
    return Explainer(tiny_cnn.model(np.float32), layer="B", providers="CPUExecutionProvider")


@pytest.mark.parametrize("target", [5, 1000, -2, [0, 7, 1]])
def test_a_class_index_out_of_range_is_an_error(tiny, target):
    images = tiny_cnn.images().astype(np.float32)
    bad = target if isinstance(target, int) else 7
    _one_line_error(lambda: tiny(images, target), f"class index {bad} is out of range", "5 classes (0..4)", "-1")
    _one_line_error(lambda: tiny.gradients(images, target), f"class index {bad}")


def test_the_top_class_and_the_last_class_are_in_range(tiny):
    result = tiny(tiny_cnn.images().astype(np.float32), [-1, 4, 0])
    assert result.classes[1:].tolist() == [4, 0] and 0 <= result.classes[0] <= 4


def test_images_of_a_size_a_fixed_size_model_cannot_take(resnet):
    _, images, path = resnet
    _one_line_error(lambda: Explainer(path)(np.zeros((2, 3, 32, 48), np.float32)),
                    "(2, 3, 32, 48)", "3, 64, 64)", "resize")
    _one_line_error(lambda: Explainer(path)(np.zeros((3, 64, 64), np.float32)), "rank-4", "(3, 64, 64)")


def test_a_batch_a_fixed_batch_model_cannot_take():
    model = tiny_cnn.model(np.float32)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    _one_line_error(lambda: Explainer(model, layer="B")(tiny_cnn.images(3).astype(np.float32)),
                    "batches of exactly 2", "got 3")


def test_a_model_proto_loaded_without_its_external_data(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(tiny_cnn.model(np.float32), str(path), save_as_external_data=True, size_threshold=0,
              location="weights.bin")
    loaded = onnx.load(str(path), load_external_data=False)
    _one_line_error(lambda: Explainer(loaded, layer="B"), "stored outside the model", "weights.bin",
                    "load_external_data=True")
    assert Explainer(str(path), layer="B").layers  # the path itself is fine


def test_mask_and_detection_indices_out_of_range():
    with pytest.raises(ValueError, match="class index 9 is out of range: the output has 5"):
        Mask(9).seed((5, 4, 4), np.float32)
    with pytest.raises(ValueError, match="class index -1 is out of range"):
        Mask(-1).seed((5, 4, 4), np.float32)
    with pytest.raises(ValueError, match="anchor 100 is out of range: the output has 100"):
        Detection(1, anchor=100).seed((4 + 3, 100), np.float32)
    with pytest.raises(ValueError, match="class index 3 is out of range: the output has 3"):
        Detection(3, anchor=5, layout="boxes_first").seed((100, 5 + 3), np.float32)


def test_gradients_split_batches_by_max_batch():
    images = tiny_cnn.images(8).astype(np.float32)
    whole = Explainer(tiny_cnn.model(np.float32), layer="B").gradients(images, 2)["B"]
    chunked_explainer = Explainer(tiny_cnn.model(np.float32), layer="B", max_batch=3)
    chunked = chunked_explainer.gradients(images, 2)["B"]
    assert chunked_explainer.runs["explainer"] == 3
    np.testing.assert_allclose(chunked.gradients, whole.gradients, rtol=1e-6)
    np.testing.assert_allclose(chunked.activations, whole.activations, rtol=1e-6)
