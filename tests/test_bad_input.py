"""Bad input is one clear line, raised before ONNX Runtime sees it, never a silent wrong map."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tiny_cnn
from onnx_gradcam import Detection, Explainer, Mask
from onnx_gradcam.methods import METHODS


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


@pytest.mark.parametrize("method", METHODS)
def test_an_empty_batch_gives_an_empty_result_of_the_right_shape(method):
    explainer = Explainer(tiny_cnn.model(np.float32), layer=["A", "B"], method=method)
    result = explainer(np.zeros((0, 8, 8, 3), np.float32))
    assert result.cams.shape == (0, 8, 8) and result.cams.dtype == np.float32
    assert result.raw["A"].shape == (0, 8, 8) and result.raw["B"].shape == (0, 4, 4)
    assert result.outputs["logits"].shape == (0, 5) and result.classes.shape == (0,)


def test_an_empty_batch_through_the_exported_model_in_plain_onnxruntime(resnet, tmp_path):
    """ReduceMean's and GlobalAveragePool's backward divided Size(x) by Size(y): an integer 0 / 0 for N = 0."""
    _, images, path = resnet
    Explainer(path).export(str(tmp_path / "x.onnx"), targets="input")
    session = ort.InferenceSession(str(tmp_path / "x.onnx"), providers=["CPUExecutionProvider"])
    empty = {"input": np.zeros((0, 3, 64, 64), np.float32), "target_class": np.zeros(0, np.int64)}
    logits, cam = session.run(["output", "cam"], empty)
    assert logits.shape == (0, 1000) and cam.shape == (0, 64, 64)
    one = {"input": images.numpy()[:1], "target_class": np.asarray([-1])}  # the same model, still right at N = 1
    assert np.isfinite(session.run(["cam"], one)[0]).all()
