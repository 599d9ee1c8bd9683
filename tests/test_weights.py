"""The detached weights: moved out of the model once into a file of their own, read back by ONNX Runtime in
place and put back byte for byte for a self-contained copy."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnx_gradcam.graph.weights import ALIGNMENT, DetachedWeights, placeholders


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    big = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "big")
    typed = helper.make_tensor("typed", TensorProto.FLOAT, [32, 8], rng.standard_normal(256).astype(np.float32))
    half = numpy_helper.from_array(rng.standard_normal((8, 300)).astype(np.float16), "half")
    small = numpy_helper.from_array(np.ones(4, np.float32), "small")
    nodes = [helper.make_node("MatMul", ["x", "big"], ["a"]), helper.make_node("MatMul", ["a", "typed"], ["b"]),
             helper.make_node("Cast", ["half"], ["h"], to=TensorProto.FLOAT),
             helper.make_node("MatMul", ["b", "h"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 300])],
                              [big, typed, half, small])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _run(model, x):
    session = ort.InferenceSession(model if isinstance(model, str) else model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_large_weights_move_to_an_aligned_file_and_sessions_read_them_there():
    original = _model()
    x = np.random.default_rng(1).standard_normal((2, 64)).astype(np.float32)
    light = _model()
    detached = DetachedWeights(light)
    assert sorted(placeholders(light)) == ["big", "half", "typed"] and len(detached) == 3
    assert light.ByteSize() < 1000, "the data is still in the model"
    path = detached.session_file(light)
    offsets = [int(entry.value) for tensor in onnx.load(path, load_external_data=False).graph.initializer
               for entry in tensor.external_data if entry.key == "offset"]
    assert len(offsets) == 3 and all(offset % ALIGNMENT == 0 for offset in offsets)
    np.testing.assert_array_equal(_run(path, x), _run(original, x))
    assert placeholders(light), "session_file changed the model it was given"


def test_attach_puts_the_weights_back_byte_for_byte():
    original, light = _model(), _model()
    detached = DetachedWeights(light)
    detached.attach(light)
    assert placeholders(light) == []
    for got, expected in zip(light.graph.initializer, original.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(got), numpy_helper.to_array(expected))


def test_the_file_goes_with_the_weights_object():
    detached = DetachedWeights(_model())
    folder = os.path.dirname(detached.session_file(onnx.ModelProto()))
    assert os.path.isdir(folder)
    del detached
    assert not os.path.exists(folder)
