"""The backward driver on its own: accumulation, stops, zero gradients, rule arity, names and dtypes.

Tiny models run on ONNX Runtime; every gradient is checked against numpy written out by hand.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from adjoint import model_text, parse, shape_text
from onnx_gradcam.autodiff import UnsupportedOperatorError, backward, gradient_model, gradient_names
from onnx_gradcam.autodiff.registry import RULES
from onnx_gradcam.graph.assemble import extend_model, tensor_info
from onnx_gradcam.graph.builder import NAMESPACE
from onnx_gradcam.graph.model import normalize
from onnx_gradcam.graph.view import FLOAT_TYPES, GraphView



def normal(shape, seed: int, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def text(body: str, inputs: str, outputs: str) -> str:
    return model_text(body, inputs, outputs, opset=18)


def run_gradients(model: onnx.ModelProto, wrt: list[str], feeds: dict, seed: np.ndarray,
                  output: str | None = None) -> dict[str, np.ndarray]:
    """The gradients :func:`gradient_model` computes on ONNX Runtime for seed ``seed``."""
    grads_model = gradient_model(model, wrt, output)
    onnx.checker.check_model(grads_model, full_check=True)
    seed_name, outputs = gradient_names(grads_model, wrt)
    session = ort.InferenceSession(grads_model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(wrt, session.run([outputs[t] for t in wrt], {**feeds, seed_name: seed})))


# --- (a) fan-out: a tensor read by several consumers gets the sum of their gradients -----------------------------
FAN_OUT = {
    # x read four times: both inputs of Mul, Sin and the last Add.
    "graph_input": ("square = Mul(x, x)\nsine = Sin(x)\npartial = Add(square, sine)\ny = Add(partial, x)",
                    lambda x: 2 * x + np.cos(x) + 1),
    # an intermediate h = exp(x) read by Mul (twice), Sin and Add.
    "intermediate": ("h = Exp(x)\nsquare = Mul(h, h)\nsine = Sin(h)\npartial = Add(square, sine)\ny = Add(partial, h)",
                     lambda x: (2 * np.exp(x) + np.cos(np.exp(x)) + 1) * np.exp(x)),
}


@pytest.mark.parametrize("case", FAN_OUT.values(), ids=FAN_OUT.keys())
def test_fan_out_contributions_are_summed(case):
    body, derivative = case
    x, v = normal((2, 3), 1), normal((2, 3), 2)
    grads = run_gradients(parse(text(body, "float[2,3] x", "float[2,3] y")), ["x"], {"x": x}, v)
    np.testing.assert_allclose(grads["x"], v * derivative(x.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_gradient_names_are_the_plain_ones_when_free():
    grads_model = gradient_model(parse(text("y = Sin(x)", "float[2,3] x", "float[2,3] y")), ["x"])
    assert gradient_names(grads_model, ["x"]) == ("seed", {"x": "grad/x"})


# --- (b) non-differentiable paths carry nothing, the float path beside them does ---------------------------------
STOPS = """
sine = Sin(x)
floored = Floor(x)
shape = Shape(x)
shape_float = Cast<to = 1>(shape)
winner = ArgMax<axis = 1, keepdims = 1>(x)
winner_float = Cast<to = 1>(winner)
weighted = Mul(winner_float, x)
y = Sum(sine, floored, shape_float, weighted)
"""


def test_non_differentiable_paths_stop_the_gradient():
    x = np.array([[0.3, 1.7], [2.2, -0.4], [-1.3, -2.6]], np.float32)  # row winners 1, 0, 0
    v = normal((3, 2), 3)
    grads = run_gradients(parse(text(STOPS, "float[3,2] x", "float[3,2] y")), ["x"], {"x": x}, v)
    winner = np.argmax(x, axis=1)[:, None].astype(np.float64)
    np.testing.assert_allclose(grads["x"], v * (np.cos(x.astype(np.float64)) + winner), rtol=1e-5, atol=1e-6)


def test_only_stopped_paths_give_zeros():
    body = ("floored = Floor(x)\nwinner = ArgMax<axis = 1, keepdims = 1>(x)\nwinner_float = Cast<to = 1>(winner)\n"
            "y = Add(floored, winner_float)")
    x, v = normal((2, 3), 4) * 3, normal((2, 3), 5)
    grads = run_gradients(parse(text(body, "float[2,3] x", "float[2,3] y")), ["x"], {"x": x}, v)
    assert grads["x"].dtype == np.float32 and grads["x"].shape == (2, 3)
    np.testing.assert_array_equal(grads["x"], np.zeros((2, 3), np.float32))


# --- (c) a tensor the output does not depend on: exact zeros, even where it holds inf and NaN ---------------------
def test_unreached_tensors_get_exact_zeros_of_their_shape_and_type():
    model = parse(text("w = Exp(z)\ny = Sin(x)", "float[2,3] x, double[4,2] z", "float[2,3] y, double[4,2] w"))
    x, v = normal((2, 3), 6), normal((2, 3), 7)
    z = np.array([[np.inf, -np.inf], [np.nan, 0.0], [800.0, -1.0], [2.0, np.nan]])  # exp(800) is inf too
    grads = run_gradients(model, ["x", "z", "w"], {"x": x, "z": z}, v, output="y")
    for name in ("z", "w"):
        assert grads[name].dtype == np.float64 and grads[name].shape == (4, 2)
        assert not np.any(np.isnan(grads[name])), f"the zero gradient of {name} has NaN where {name} is inf or NaN"
        np.testing.assert_array_equal(grads[name], np.zeros((4, 2)))
    np.testing.assert_allclose(grads["x"], v * np.cos(x.astype(np.float64)), rtol=1e-5, atol=1e-6)


# --- (d) a rule must give exactly one entry per input -------------------------------------------------------------
def _too_few(g, s):
    return [s.dy[0]]


def _too_many(g, s):
    return [s.dy[0], None]


def _not_a_list(g, s):
    return s.dy[0]


ARITY = """
[the_product] product = Mul(x, x)
[the_sine] y = Sin(product)
"""


@pytest.mark.parametrize("op, node, bad_rule, returned", [
    ("Mul", "the_product", _too_few, "returned 1 gradients"),
    ("Sin", "the_sine", _too_many, "returned 2 gradients"),
    ("Sin", "the_sine", _not_a_list, "returned a str"),
], ids=["too_few", "too_many", "not_a_list"])
def test_a_rule_returning_the_wrong_number_of_gradients_is_named(monkeypatch, op, node, bad_rule, returned):
    monkeypatch.setitem(RULES, op, bad_rule)
    with pytest.raises(RuntimeError) as error:
        gradient_model(parse(text(ARITY, "float[2,3] x", "float[2,3] y")), ["x"])
    message = str(error.value)
    assert f"{bad_rule.__module__}.{bad_rule.__qualname__}" in message
    assert f"{op} node {node!r}" in message
    assert returned in message


# --- (e) names: the model's own names never clash with the seed, the gradients or what the builder makes up -------
def _colliding_model() -> onnx.ModelProto:
    """y = reshape(sin(x * seed) * x / c), every tensor and node named like something the builder makes up."""
    nodes = [
        helper.make_node("Mul", ["x", "seed"], ["mul_1"], name="onnx_gradcam/node_mul_2"),
        helper.make_node("Sin", ["mul_1"], ["onnx_gradcam/mul_1"], name="onnx_gradcam/node_sin_1"),
        helper.make_node("Mul", ["onnx_gradcam/mul_1", "x"], ["grad/x"], name="grad/x"),
        helper.make_node("Div", ["grad/x", "onnx_gradcam/scalar_3"], ["div_2"], name="onnx_gradcam/node_div_4"),
        helper.make_node("Reshape", ["div_2", "onnx_gradcam/ints_5"], ["reshape_3"], name="seed_1"),
        helper.make_node("Identity", ["reshape_3"], ["grad/x_1"], name="onnx_gradcam/node_output_6"),
    ]
    initializers = [numpy_helper.from_array(np.array(2.5, np.float32), "onnx_gradcam/scalar_3"),
                    numpy_helper.from_array(np.array([3, 2], np.int64), "onnx_gradcam/ints_5")]
    graph = helper.make_graph(
        nodes, "collisions",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3]) for name in ("x", "seed")],
        [helper.make_tensor_value_info("reshape_3", TensorProto.FLOAT, [3, 2]),
         helper.make_tensor_value_info("grad/x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("grad/x_1", TensorProto.FLOAT, [3, 2])],
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_names_taken_by_the_model_do_not_clash():
    wrt = ["x", "mul_1", "onnx_gradcam/mul_1"]
    grads_model = gradient_model(_colliding_model(), wrt, output="reshape_3")
    onnx.checker.check_model(grads_model, full_check=True)
    seed_name, outputs = gradient_names(grads_model, wrt)
    assert seed_name == "seed_2"  # "seed" and "seed_1" are the model's
    assert outputs == {"x": "grad/x_2", "mul_1": "grad/mul_1", "onnx_gradcam/mul_1": "grad/onnx_gradcam/mul_1"}

    x, s, v = normal((2, 3), 8), normal((2, 3), 9), normal((3, 2), 10)
    session = ort.InferenceSession(grads_model.SerializeToString(), providers=["CPUExecutionProvider"])
    own_grad_x, *grads = session.run(["grad/x", *outputs.values()], {"x": x, "seed": s, seed_name: v})

    x64, s64 = x.astype(np.float64), s.astype(np.float64)
    product = x64 * s64
    d_scaled = v.astype(np.float64).reshape(2, 3) / 2.5  # back through Reshape and Div
    d_sine = d_scaled * x64
    d_product = d_sine * np.cos(product)
    expected = [d_scaled * np.sin(product) + d_product * s64, d_product, d_sine]
    for name, grad, want in zip(wrt, grads, expected):
        np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6, err_msg=f"gradient of {name}")
    np.testing.assert_allclose(own_grad_x, np.sin(product) * x64, rtol=1e-6, err_msg="the model's own grad/x")


def test_backward_emits_into_the_given_builder():
    """The seed, the backward pass and the outputs come from one builder: one namespace, one counter."""
    view = GraphView(normalize(parse(text("h = Exp(x)\ny = Mul(h, x)", "float[2,3] x", "float[2,3] y"))))
    builder = view.builder()
    ones = builder.op("Add", builder.zeros_like("y"), builder.scalar(1.0, "y"))
    grads = backward(view, "y", ones, ["x"], builder)
    assert list(grads) == ["x"]
    made_up = [name for node in builder.nodes for name in (*node.output, node.name)]
    assert made_up and all(name.startswith(NAMESPACE) for name in made_up)
    assert len(set(made_up)) == len(made_up)

    output = builder.rename(grads["x"], builder.claim("dx"))
    model = extend_model(view.model, builder.nodes, builder.initializers,
                         outputs=[tensor_info(output, TensorProto.FLOAT, [2, 3])])
    onnx.checker.check_model(model, full_check=True)
    x = normal((2, 3), 11)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (dx,) = session.run([output], {"x": x})
    np.testing.assert_allclose(dx, np.exp(x.astype(np.float64)) * (x + 1), rtol=1e-5)


# --- (f) float64 and float16 models: scalars of their own type -----------------------------------------------------
DTYPES = {"double": (np.float64, TensorProto.DOUBLE, 1e-12, 0.0), "float16": (np.float16, TensorProto.FLOAT16, 1e-2, 1e-2)}
SCALAR_RULES = "t = Tanh(x)\nsoft = Softsign(x)\nsig = Sigmoid(x)\nroot = Sqrt(sig)\nr = Relu(x)\ny = Sum(t, soft, root, r)"


@pytest.mark.parametrize("type_name", DTYPES)
def test_other_float_types_differentiate_in_their_own_type(type_name):
    dtype, elem_type, rtol, atol = DTYPES[type_name]
    model = parse(text(SCALAR_RULES, f"{type_name}[2,5] x", f"{type_name}[2,5] y"))
    grads_model = gradient_model(model, ["x"])
    onnx.checker.check_model(grads_model, full_check=True)
    emitted = [t for t in grads_model.graph.initializer if t.name.startswith(NAMESPACE) and t.data_type in FLOAT_TYPES]
    assert emitted, "the rules made no float constants: this test shows nothing"
    assert {t.data_type for t in emitted} == {elem_type}
    seed_name, outputs = gradient_names(grads_model, ["x"])

    x = np.array([[-2.5, -1.0, -0.3, 0.2, 0.7], [1.1, 1.9, -0.8, 3.0, 0.05]], dtype)
    v = normal((2, 5), 12, dtype)
    session = ort.InferenceSession(grads_model.SerializeToString(), providers=["CPUExecutionProvider"])
    (dx,) = session.run([outputs["x"]], {"x": x, seed_name: v})
    assert dx.dtype == dtype

    x64 = x.astype(np.float64)
    sig = 1 / (1 + np.exp(-x64))
    derivative = (1 - np.tanh(x64) ** 2 + 1 / (1 + np.abs(x64)) ** 2 + sig * (1 - sig) / (2 * np.sqrt(sig))
                  + (x64 > 0))
    np.testing.assert_allclose(dx.astype(np.float64), v.astype(np.float64) * derivative, rtol=rtol, atol=atol)


# --- (g) integer paths: quantised ones carry the gradient of their values, any other one raises ---------------------
TURNED_INTEGER = {
    "alone": "[to_int] as_int = Cast<to = 6>(x)\ny = Cast<to = 1>(as_int)",
    "beside_a_float_path": "[to_int] as_int = Cast<to = 6>(x)\nint_back = Cast<to = 1>(as_int)\nsine = Sin(x)\n"
                           "y = Add(sine, int_back)",
    "through_integer_ops": "[to_int] as_int = Cast<to = 6>(x)\ndoubled = Add(as_int, as_int)\n"
                           "y = Cast<to = 1>(doubled)",
    "into_a_dequantize": "[to_int] as_int = Cast<to = 3>(x)\ny = DequantizeLinear(as_int, scale)",
}


@pytest.mark.parametrize("body", TURNED_INTEGER.values(), ids=TURNED_INTEGER.keys())
def test_a_float_path_turned_integer_raises_instead_of_a_silent_zero(body):
    model = parse(model_text(body, "float[2,3] x", "float[2,3] y", opset=19, initializers="float scale = {0.5}"))
    with pytest.raises(UnsupportedOperatorError) as error:
        gradient_model(model, ["x"])
    message = str(error.value)
    assert "'Cast' at node 'to_int'" in message and "'as_int'" in message and "zero in silence" in message
    assert "Choose a layer after it" in message and "QuantFormat.QDQ" in message


SHAPED_BY_VALUES = {
    "reshape": ("sine = Sin(x)\ny = Reshape(sine, sizes)", [3, 2], lambda v: v.reshape(2, 3)),
    "tile": ("sine = Sin(x)\ny = Tile(sine, sizes)", [6, 6], lambda v: v.reshape(3, 2, 2, 3).sum(axis=(0, 2))),
}


@pytest.mark.parametrize("case", SHAPED_BY_VALUES.values(), ids=SHAPED_BY_VALUES.keys())
def test_an_integer_path_feeding_only_a_shape_is_a_shape_computation(case):
    """x's values, cast to int64, give a Reshape its shape or a Tile its repeats: no gradient flows there, and
    none should; the float path beside them is exact."""
    use, y_shape, back = case
    body = ("nothing = Mul(x, zero)\ntotal = ReduceSum<keepdims = 0>(nothing)\nwanted = Add(total, values)\n"
            f"sizes = Cast<to = 7>(wanted)\n{use}")
    model = parse(model_text(body, "float[2,3] x", f"float{shape_text(y_shape)} y", opset=18,
                             initializers="float zero = {0.0}, float[2] values = {3.0, 2.0}"))
    x, v = normal((2, 3), 13), normal(y_shape, 14)
    grads = run_gradients(model, ["x"], {"x": x}, v)
    np.testing.assert_allclose(grads["x"], back(v.astype(np.float64)) * np.cos(x.astype(np.float64)), rtol=1e-5,
                               atol=1e-6)


def _qdq_model(scale, zero_point, axis: int, shape: list[int], elem_type: int,
               float_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """y = DequantizeLinear(QuantizeLinear(x)), with its quantisation parameters as initializers."""
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zero_point"], ["q"], name="quantize", axis=axis),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero_point"], ["y"], name="dequantize", axis=axis)]
    initializers = [numpy_helper.from_array(np.asarray(scale, helper.tensor_dtype_to_np_dtype(float_type)), "scale"),
                    numpy_helper.from_array(np.asarray(zero_point, dtype), "zero_point")]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", float_type, shape)],
                              [helper.make_tensor_value_info("y", float_type, shape)], initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=10)


def _torch_fake_quantize(x: np.ndarray, v: np.ndarray, scale, zero_point, axis: int, elem_type: int):
    """torch's fake quantisation of x (per tensor, or per channel along ``axis``) and its VJP of v."""
    info = np.iinfo(helper.tensor_dtype_to_np_dtype(elem_type))
    tx = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    if np.ndim(scale) == 0:
        y = torch.fake_quantize_per_tensor_affine(tx, float(scale), int(zero_point), int(info.min), int(info.max))
    else:
        y = torch.fake_quantize_per_channel_affine(tx, torch.tensor(scale, dtype=torch.float32),
                                                   torch.tensor(zero_point, dtype=torch.int32), axis,
                                                   int(info.min), int(info.max))
    y.backward(torch.tensor(v))
    return y.detach().numpy(), tx.grad.numpy()


# x / 0.5 + 3 on both sides of each bound, ties rounded to even as QuantizeLinear and torch do.
AT_THE_BOUNDS = {TensorProto.INT8: [-65.5, -65.75, -65.25, -66.0, 62.0, 62.25, 62.5, 62.75, 0.3, -7.1],
                 TensorProto.UINT8: [-1.5, -1.75, -1.25, -2.0, 126.0, 126.25, 126.5, 126.75, 0.3, 40.6]}


@pytest.mark.parametrize("float_type", [TensorProto.FLOAT, TensorProto.FLOAT16], ids=["float32", "float16"])
@pytest.mark.parametrize("elem_type", AT_THE_BOUNDS, ids=["int8", "uint8"])
def test_a_qdq_pair_passes_dy_inside_the_clip_range_bounds_included(elem_type, float_type):
    """dx = dy where qmin <= round(x / s) + zp <= qmax, else 0: torch's fake_quantize backward."""
    dtype = helper.tensor_dtype_to_np_dtype(float_type)
    x = np.array(AT_THE_BOUNDS[elem_type] * 2, np.float32).reshape(4, 5)
    x[2:] += normal((2, 5), 15) * 0.01  # and values away from the bounds
    x, v = x.astype(dtype), normal((4, 5), 16, dtype)
    grads = run_gradients(_qdq_model(0.5, 3, 1, [4, 5], elem_type, float_type), ["x"], {"x": x}, v)
    _, expected = _torch_fake_quantize(x.astype(np.float32), v.astype(np.float32), 0.5, 3, 1, elem_type)
    inside = expected != 0
    assert inside.any() and not inside.all(), "the test values must lie on both sides of the clip range"
    assert grads["x"].dtype == dtype
    np.testing.assert_allclose(grads["x"].astype(np.float32), expected, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(grads["x"] != 0, inside)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_a_per_channel_qdq_pair_gates_each_channel_by_its_own_range(axis):
    shape = [3, 4, 5]
    channels = shape[axis]
    rng = np.random.default_rng(17)
    scale = rng.uniform(0.01, 0.05, channels).astype(np.float32)
    zero_point = rng.integers(-20, 20, channels).astype(np.int8)
    x = (rng.standard_normal(shape) * 3).astype(np.float32)  # about a tenth falls outside each channel's range
    v = normal(shape, 18)
    grads = run_gradients(_qdq_model(scale, zero_point, axis, shape, TensorProto.INT8), ["x"], {"x": x}, v)
    _, expected = _torch_fake_quantize(x, v, scale, zero_point, axis % len(shape), TensorProto.INT8)
    assert (expected == 0).any() and (expected != 0).any()
    np.testing.assert_allclose(grads["x"], expected, rtol=1e-6, atol=0)
