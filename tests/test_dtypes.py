"""Every method on float16, float32 and float64 models: the tiny channels-last CNN of tests/tiny_cnn.py, whose
float64 NumPy oracle computes the forward pass, the gradients, each method and the post-processing.

float64 maps equal the oracle to 1e-6 (float32 ones too, a little less closely); float16 maps follow the
float32 model's with a Pearson correlation of at least 0.99 (measured: 0.9999 or more, largest difference
about 3e-2, for Ablation-CAM at the sigmoid layer; 2e-3 or less elsewhere).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tiny_cnn
from onnx_gradcam import Explainer
from onnx_gradcam.build import build_explainer_model
from onnx_gradcam.methods import METHODS
from onnx_gradcam.targets import Seeding

CLASSES = [0, 3, 4]
LAYERS = (["A"], ["B"], ["A", "B"])


def _explain(dtype, method: str, layers, **options):
    explainer = Explainer(tiny_cnn.model(dtype), layer=layers, method=method, providers="CPUExecutionProvider",
                          **options)
    return explainer(tiny_cnn.images().astype(dtype), CLASSES)


def test_the_oracle_reproduces_onnx_runtimes_forward_pass():
    images = tiny_cnn.images()
    session = ort.InferenceSession(tiny_cnn.model(np.float64).SerializeToString(), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": images})
    np.testing.assert_allclose(logits, tiny_cnn.forward(images, tiny_cnn.weights())[2], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layers", LAYERS, ids="+".join)
@pytest.mark.parametrize("method", METHODS)
def test_float64_maps_equal_the_float64_oracle(method, layers):
    result = _explain(np.float64, method, layers)
    expected = tiny_cnn.oracle_maps(method, layers, tiny_cnn.images(), CLASSES)
    assert np.ptp(expected, axis=(1, 2)).min() > 0.5, "the oracle's maps are flat: no evidence"
    assert np.isfinite(result.cams).all()
    assert np.abs(result.cams - expected).max() <= 1e-6


@pytest.mark.parametrize("method", METHODS)
def test_float32_maps_equal_the_float64_oracle(method):
    result = _explain(np.float32, method, ["A", "B"])
    expected = tiny_cnn.oracle_maps(method, ["A", "B"], tiny_cnn.images(), CLASSES)
    assert np.abs(result.cams - expected).max() <= 1e-5


@pytest.mark.parametrize("layers", LAYERS, ids="+".join)
@pytest.mark.parametrize("method", METHODS)
def test_float16_maps_follow_the_float32_model(method, layers):
    half = _explain(np.float16, method, layers).cams
    single = _explain(np.float32, method, layers).cams
    assert half.dtype == np.float32 and np.isfinite(half).all()
    correlation = np.corrcoef(half.ravel(), single.ravel())[0, 1]
    assert correlation >= 0.99, f"Pearson {correlation:.5f}, max difference {np.abs(half - single).max():.2e}"


def test_float64_gradients_equal_the_oracle_in_the_models_own_type():
    explainer = Explainer(tiny_cnn.model(np.float64), layer=["A", "B"], providers="CPUExecutionProvider")
    ours = explainer.gradients(tiny_cnn.images(), CLASSES)
    expected = tiny_cnn.gradients(tiny_cnn.images(), tiny_cnn.weights(), CLASSES)
    for key, gradient in zip(["A", "B"], expected):
        assert ours[key].gradients.dtype == np.float64
        np.testing.assert_allclose(ours[key].gradients, gradient, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_eigen_smooth_and_aug_smooth_run_on_other_float_types(dtype):
    smoothed = _explain(dtype, "gradcam", ["A"], eigen_smooth=True).cams
    explainer = Explainer(tiny_cnn.model(dtype), layer="A", providers="CPUExecutionProvider")
    augmented = explainer(tiny_cnn.images().astype(dtype), CLASSES, aug_smooth=True).cams
    for cams in (smoothed, augmented):
        assert np.isfinite(cams).all() and np.ptp(cams, axis=(1, 2)).min() > 0.5


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_several_targets_per_image_on_other_float_types(dtype):
    explainer = Explainer(tiny_cnn.model(dtype), layer="B", providers="CPUExecutionProvider")
    images = tiny_cnn.images().astype(dtype)
    several = explainer(images, [[0, 3]] * len(images)).cams
    for column, target in enumerate([0, 3]):
        np.testing.assert_allclose(several[:, column], explainer(images, target).cams, atol=1e-6)


def _twin_nodes(dtype, precision: str):
    """(the twin nodes of an explainer model at layer A, the model's own nodes, the explainer model)."""
    explainer = Explainer(tiny_cnn.model(dtype), layer="A", providers="CPUExecutionProvider", precision=precision)
    built = build_explainer_model(explainer.subject, Seeding.TOP, "gradcam")
    twins = [node for node in built.model.graph.node if node.name.endswith("/float32")]
    return twins, explainer.subject.view.nodes, built


def test_float32_precision_recomputes_a_float16_head_in_float32_beside_the_models_own():
    twins, own, built = _twin_nodes(np.float16, "float32")
    assert twins and {node.name.removesuffix("/float32") for node in twins} <= {node.name for node in own}
    types = {info.name: info.type.tensor_type.elem_type for info in onnx.shape_inference.infer_shapes(
        built.model).graph.value_info}
    assert {types[name] for node in twins for name in node.output} == {onnx.TensorProto.FLOAT}
    kept = {node.name: node for node in built.model.graph.node}
    assert all(kept[node.name] == node for node in own), "the model's own nodes were changed"


@pytest.mark.parametrize("dtype, precision", [(np.float16, "model"), (np.float32, "float32"),
                                              (np.float64, "float32")])
def test_no_twin_where_the_head_is_computed_as_it_stands(dtype, precision):
    twins, _, _ = _twin_nodes(dtype, precision)
    assert twins == []


def test_an_unknown_precision_is_refused():
    with pytest.raises(ValueError, match=r"precision='half' is not one of \['float32', 'model'\]"):
        Explainer(tiny_cnn.model(np.float16), layer="A", precision="half")
