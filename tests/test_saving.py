"""onnx_gradcam.graph.saving writes the very model onnx.save writes, one weight at a time."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_gradcam.graph.saving import check_structure, save_streamed


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), f"w{n}") for n in (3, 40, 130)]
    nodes = [helper.make_node("MatMul", ["x", "w3"], ["a"]), helper.make_node("Identity", ["a"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], weights,
                              doc_string="a graph", value_info=[helper.make_tensor_value_info("a", TensorProto.FLOAT,
                                                                                               [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9,
                              producer_name="test", doc_string="a model")
    onnx.helper.set_model_props(model, {"key": "value"})
    return model


def test_the_streamed_file_is_the_model(tmp_path):
    model = _model()
    save_streamed(model, str(tmp_path / "streamed.onnx"))
    loaded = onnx.load(str(tmp_path / "streamed.onnx"))
    assert loaded == model
    onnx.checker.check_model(str(tmp_path / "streamed.onnx"), full_check=True)
    x = np.ones((2, 3), np.float32)
    got = ort.InferenceSession(str(tmp_path / "streamed.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(got[0], x @ numpy_helper.to_array(model.graph.initializer[0]))


def test_a_graph_longer_than_one_varint_byte_and_no_initializers(tmp_path):
    model = _model()
    del model.graph.initializer[:]
    model.graph.initializer.append(numpy_helper.from_array(np.ones((3, 3), np.float32), "w3"))
    big = _model()  # a graph of ~70 kB: lengths of three varint bytes
    for path, expected in ((tmp_path / "small.onnx", model), (tmp_path / "big.onnx", big)):
        save_streamed(expected, str(path))
        assert onnx.load(str(path)) == expected


def test_the_structure_is_checked_without_the_weights():
    model = _model()
    check_structure(model)
    model.graph.node[0].op_type = "NoSuchOp"
    with pytest.raises(onnx.checker.ValidationError, match="NoSuchOp"):
        check_structure(model)
