"""Bad input is one clear line, raised before ONNX Runtime sees it, never a silent wrong map."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

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
                    "takes 64x64 images", "got 32x48 in (2, 3, 32, 48)", "3, 64, 64)", "resize them to 64x64")
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


QUICKSTART = "examples/data/shapes_cnn.onnx"
"""The quick start's trained model: NCHW (batch, 3, 64, 64), 3 classes."""


def _pictures(count: int = 3) -> np.ndarray:
    """Pixels in [0, 1], as the quick-start model takes them."""
    return np.random.default_rng(2).random((count, 3, 64, 64)).astype(np.float32)


def _real_maps(cams: np.ndarray) -> None:
    """Every map finite and not flat: a map is never silently NaN or all zero."""
    assert np.isfinite(cams).all() and (cams.reshape(len(cams), -1).max(axis=1) > 0.5).all()


@pytest.fixture(scope="module")
def quickstart():
    return Explainer(QUICKSTART, providers="CPUExecutionProvider")


@pytest.mark.parametrize("dtype, fix", [(np.uint8, "images.astype(np.float32) / 255"),
                                        (np.float64, "images.astype(np.float32)"),
                                        (np.int64, "images.astype(np.float32)")])
def test_a_wrong_dtype_names_the_cast(quickstart, dtype, fix):
    pixels = np.round(_pictures() * 255).astype(dtype)
    _one_line_error(lambda: quickstart(pixels), "input 'input' takes float32 arrays", f"got {np.dtype(dtype).name}",
                    fix)
    _real_maps(quickstart(pixels.astype(np.float32) / 255).cams)  # the fix it names works


def test_one_image_without_its_batch_axis(quickstart):
    _one_line_error(lambda: quickstart(_pictures()[0]), "rank-4", "(3, 64, 64)", "images[None]")


def test_an_nhwc_array_for_an_nchw_model_names_the_transpose(quickstart):
    images = _pictures()
    channels_last = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    _one_line_error(lambda: quickstart(channels_last), "is NCHW (batch, 3, 64, 64)", "(3, 64, 64, 3)",
                    "looks like NHWC", "images.transpose(0, 3, 1, 2)")
    np.testing.assert_array_equal(quickstart(channels_last.transpose(0, 3, 1, 2)).cams, quickstart(images).cams)


def test_an_nchw_array_for_an_nhwc_model_names_the_transpose(tiny):
    channels_first = tiny_cnn.images().astype(np.float32).transpose(0, 3, 1, 2)
    _one_line_error(lambda: tiny(channels_first), "is NHWC (N, 8, 8, 3)", "looks like NCHW",
                    "images.transpose(0, 2, 3, 1)")


@pytest.mark.parametrize("channels, fix", [(1, "np.repeat(images, 3, axis=1)"), (4, "images[:, :3]"),
                                           (2, "give 3 channels")])
def test_a_wrong_channel_count_names_the_fix(quickstart, channels, fix):
    images = np.random.default_rng(3).random((2, channels, 64, 64)).astype(np.float32)
    _one_line_error(lambda: quickstart(images), "takes 3-channel NCHW images", f"with {channels} at the channel "
                    "axis 1", fix)


def test_a_nan_or_inf_pixel_is_an_error_naming_the_images(quickstart):
    images = _pictures(4)
    images[1, 0, 5, 5], images[3, 2, 0, 0] = np.nan, np.inf
    _one_line_error(lambda: quickstart(images), "images [1, 3] of 4", "hold NaN or inf (1 NaN, 1 inf)",
                    "on_nonfinite='warn'")
    _one_line_error(lambda: quickstart.gradients(images), "images [1, 3] of 4")


@pytest.mark.parametrize("method", ["gradcam", "eigencam", "ablationcam"])
def test_on_nonfinite_warn_explains_the_other_images_and_marks_the_bad_one(method):
    """Before: a NaN map and predicted class 0 (Grad-CAM, Ablation-CAM), an all-zero map (EigenCAM)."""
    explainer = Explainer(QUICKSTART, method=method, on_nonfinite="warn", providers="CPUExecutionProvider")
    images = _pictures(3)
    images[1, 1, 30, 30] = np.nan
    with pytest.warns(RuntimeWarning, match=r"image 1 of 3 holds NaN or inf .*result.nonfinite"):
        result = explainer(images)
    assert result.nonfinite.tolist() == [False, True, False]
    others = explainer(images[[0, 2]])
    assert not others.nonfinite.any()
    _real_maps(result.cams[[0, 2]])
    np.testing.assert_allclose(result.cams[[0, 2]], others.cams, atol=1e-6)
    np.testing.assert_array_equal(result.classes[[0, 2]], others.classes)
    assert np.isnan(result.cams[1]).all() and np.isnan(result.outputs["output"][1]).all()
    assert result.classes[1] == -1


def test_on_nonfinite_takes_raise_or_warn():
    _one_line_error(lambda: Explainer(QUICKSTART, on_nonfinite="ignore"), "on_nonfinite='ignore'", "'warn'")


@pytest.mark.parametrize("target, shown", [
    ("cat", "target 'cat' (str) is not a class index"), (1.5, "target 1.5 (float) is not a class index"),
    (True, "target True (bool) is not"), ([0, "dog", 1], "target 'dog' (str) is not"),
    (np.asarray(["a"]), "targets of dtype str32 are not class indices")])
def test_a_target_that_is_not_a_class_index_is_named(quickstart, target, shown):
    """Before: "invalid literal for int()" for 'cat'; 1.5 and True were explained as classes 1 and 1."""
    _one_line_error(lambda: quickstart(_pictures(), target), shown, "-1: the top class", "float seed array")


def test_a_float64_seed_array_is_cast_to_the_output_type(quickstart):
    """Before: ONNX Runtime's "Unexpected input data type" for np.eye's float64."""
    images = _pictures()
    by_seed = quickstart(images, np.eye(3)[[2, 0, 1]])
    by_class = quickstart(images, [2, 0, 1])
    _real_maps(by_seed.cams)
    np.testing.assert_allclose(by_seed.cams, by_class.cams, atol=1e-6)


def test_a_seed_of_the_wrong_shape_or_with_nan_is_named(quickstart):
    _one_line_error(lambda: quickstart(_pictures(), np.ones(3)), "target seed of shape (3,) for 3 images",
                    "(3, 3)")
    _one_line_error(lambda: quickstart(_pictures(), np.full((3, 3), np.nan)), "seed holds NaN or inf")


def test_on_nonfinite_warn_on_a_fixed_batch_model_of_one_image():
    """The stand-in keeps the batch size a fixed-batch model needs; an all-bad batch is all blank, not an error."""
    model = tiny_cnn.model(np.float32)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    image = tiny_cnn.images(1).astype(np.float32)
    image[0, 0, 0, 0] = np.inf
    with pytest.warns(RuntimeWarning, match="image 0 of 1 holds NaN or inf"):
        result = Explainer(model, layer="B", on_nonfinite="warn")(image)
    assert result.nonfinite.tolist() == [True] and np.isnan(result.cams).all() and result.classes.tolist() == [-1]


def test_on_nonfinite_warn_with_several_targets_per_image_and_aug_smooth():
    explainer = Explainer(QUICKSTART, on_nonfinite="warn", providers="CPUExecutionProvider")
    images = _pictures(2)
    images[0, 0, 0, 0] = np.nan
    with pytest.warns(RuntimeWarning):
        several = explainer(images, [[0, 1], [1, 2]])
    with pytest.warns(RuntimeWarning):
        smoothed = explainer(images, aug_smooth=True)
    alone = (explainer(images[1:], [[1, 2]]), explainer(images[1:], aug_smooth=True))
    for result, alone in zip((several, smoothed), alone):
        assert result.nonfinite.tolist() == [True, False] and np.isnan(result.cams[0]).all()
        _real_maps(result.cams[1].reshape(-1, 64, 64))
        np.testing.assert_allclose(result.cams[1:], alone.cams, atol=1e-6)


def test_targets_from_torch_are_taken_as_numpy_would(quickstart):
    import torch

    images = _pictures(2)
    assert quickstart(images, torch.tensor([2, 1])).classes.tolist() == [2, 1]
    np.testing.assert_allclose(quickstart(images, torch.eye(3)[[2, 1]]).cams, quickstart(images, [2, 1]).cams,
                               atol=1e-6)


def test_an_empty_layer_list_is_refused_when_the_explainer_is_made():
    with pytest.raises(ValueError, match=r"^layer=\[\] names no layer; give 'auto', 'all', a layer name or a list"):
        Explainer(QUICKSTART, layer=[])


def test_a_layer_the_output_is_not_computed_from_is_named_so():
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32) / 27, "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["y"]), helper.make_node("Sigmoid", ["r"], ["side"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4]),
                               helper.make_tensor_value_info("side", TensorProto.FLOAT, [1, 4, 8, 8])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    with pytest.raises(ValueError, match=r"^layer 'side' \(tensor 'side'\) is not on the path to output 'y': the "
                                         r"output is not computed from it"):
        Explainer(model, layer="side", output="y")
