"""Models whose names are the explainer's own: a generated family of the tiny CNN of tests/tiny_cnn.py whose
layers are named like PyTorch's dynamo exporter names tensors (``mul_28``, ``div_13``, ...), whose other
tensors, weights and nodes carry the names the explainer gives what it adds (``grad/<layer>``,
``cam_raw/<layer>``, ``onnx_gradcam/...``, ``cam``, ``target_class``, ``image_size``) explain exactly as the
same graph with plain names does, and as the float64 oracle says, with every in-graph method.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tiny_cnn
from onnx_gradcam import Explainer
from onnx_gradcam.graph.builder import NAMESPACE
from onnx_gradcam.methods import GRADIENT_METHODS

STEMS = ("mul", "div", "reshape", "expand", "where", "sum")
NUMBERS = range(1, 41)
CLASSES = [0, 3, 4]
INPUT_NAMES = ("target_class", "image_size", "target_seed", "input")
OUTPUT_NAMES = ("cam", "explained_class", "logits")


def colliding_names(stem: str, n: int, explainers_own: bool = True) -> tiny_cnn.Names:
    """Layer A is ``<stem>_<n>`` and layer B ``<stem>_<n + 1>``, every other tensor ``<stem>_<m>`` (as the dynamo
    exporter names them). With ``explainers_own``, the tensors after the layers are named what the explainer
    would call its outputs for them, and the weights and nodes like the explainer's own tensors."""
    layer_a, layer_b = f"{stem}_{n}", f"{stem}_{n + 1}"
    special = {"A": layer_a, "B": layer_b}
    if explainers_own:
        special.update({"input": INPUT_NAMES[n % len(INPUT_NAMES)], "t3": f"grad/{layer_a}",
                        "t4": f"cam_raw/{layer_a}", "t5": f"{NAMESPACE}{stem}_{n}", "t7": f"grad/{layer_b}",
                        "t8": f"contrib/{layer_b}", "logits": OUTPUT_NAMES[n % len(OUTPUT_NAMES)]})
    others = iter(f"{stem}_{m}" for m in range(n + 2, n + 40))
    tensors = {t: special.get(t) or next(others) for t in tiny_cnn.TENSORS}
    if not explainers_own:
        return tiny_cnn.Names(tensors=tensors)
    weights = {w: f"{NAMESPACE}{kind}_{n + i}" for i, (w, kind) in enumerate(
        zip(tiny_cnn.WEIGHTS, ["scalar", "ints", "const", "scalar", "ints", "const", "ints", "scalar", "const"]))}
    nodes = [f"{NAMESPACE}node_{stem}_{n + i}" if i % 2 else f"{stem}_{n + i}" for i in range(14)]
    return tiny_cnn.Names(tensors, weights, nodes)


def test_the_family_uses_the_explainers_names():
    names = colliding_names("div", 13)
    used = set(names.tensors.values()) | set(names.weights.values())
    assert {"div_13", "grad/div_13", "cam_raw/div_13", "grad/div_14", f"{NAMESPACE}div_13"} <= used
    model = tiny_cnn.model(np.float32, names)
    onnx.checker.check_model(model, full_check=True)
    assert len(used) == len(tiny_cnn.TENSORS) + len(tiny_cnn.WEIGHTS), "names must be unique in the graph"


@pytest.fixture(scope="module")
def plain():
    """Per method, the maps of the same graph with plain names."""
    images = tiny_cnn.images().astype(np.float32)
    return {method: Explainer(tiny_cnn.model(np.float32), layer=["A", "B"], method=method,
                              providers="CPUExecutionProvider")(images, CLASSES) for method in GRADIENT_METHODS}


@pytest.mark.parametrize("stem", STEMS)
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_colliding_names_explain_as_plain_names_do(stem, method, plain):
    images = tiny_cnn.images().astype(np.float32)
    expected = tiny_cnn.oracle_maps(method, ["A", "B"], tiny_cnn.images(), CLASSES)
    for n, explainers_own in ((n, own) for n in NUMBERS for own in (False, True)):
        names = colliding_names(stem, n, explainers_own)
        layers = [names.tensors["A"], names.tensors["B"]]
        result = Explainer(tiny_cnn.model(np.float32, names), layer=layers, method=method,
                           providers="CPUExecutionProvider")(images, CLASSES)
        assert np.abs(result.cams - plain[method].cams).max() <= 1e-6, names.tensors
        assert np.abs(result.cams - expected).max() <= 1e-5, names.tensors
        for layer, plain_layer in zip(layers, ["A", "B"]):
            np.testing.assert_allclose(result.raw[layer], plain[method].raw[plain_layer], rtol=1e-6, atol=1e-9)
        np.testing.assert_array_equal(result.classes, CLASSES)
        assert set(result.outputs) == {names.tensors["logits"]}


@pytest.mark.parametrize("n", [13, 28])
def test_saved_and_exported_models_of_colliding_names_load_in_plain_onnxruntime(n, tmp_path):
    names = colliding_names("div", n)
    explainer = Explainer(tiny_cnn.model(np.float32, names), layer=names.tensors["B"],
                          providers="CPUExecutionProvider")
    images = tiny_cnn.images().astype(np.float32)
    expected = explainer(images, CLASSES).cams
    explainer.export(str(tmp_path / "exported.onnx"), targets="input")
    exported = onnx.load(str(tmp_path / "exported.onnx"))
    onnx.checker.check_model(exported, full_check=True)
    inputs = [i.name for i in exported.graph.input]
    outputs = [o.name for o in exported.graph.output]
    assert inputs[0] == names.tensors["input"] and outputs[0] == names.tensors["logits"]
    assert len(set(inputs)) == len(inputs) == 2 and len(set(outputs)) == len(outputs) == 2
    session = ort.InferenceSession(str(tmp_path / "exported.onnx"), providers=["CPUExecutionProvider"])
    _, cam = session.run(outputs, {inputs[0]: images, inputs[1]: np.asarray(CLASSES, np.int64)})
    assert np.abs(cam - expected).max() <= 1e-6
