"""Adjoint checks for the Reduce* rules (axes as an input, opset 18+) and Softmax / LogSoftmax; kink and tie
conventions checked against torch's autograd."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from adjoint import check_adjoint, model_text, parse
from onnx_gradcam.autodiff import gradient_model

REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1", "ReduceSumSquare",
              "ReduceLogSumExp", "ReduceLogSum"]

# (axes input or None when absent, noop_with_empty_axes)
AXES = [([1], 0), ([-1], 0), ([0, 2], 0), ([2, -3], 0), (None, 0), ([], 0), (None, 1), ([], 1)]


def _reduced_shape(shape, axes, noop, keepdims):
    if not axes:
        axes = [] if noop else list(range(len(shape)))
    return list(np.sum(np.zeros(shape), axis=tuple(axes), keepdims=bool(keepdims)).shape)


def _reduce_model(op, shape, axes, noop, keepdims, opset=18):
    attrs = f"<keepdims: int = {keepdims}, noop_with_empty_axes: int = {noop}>"
    if axes is None:
        body = f"y = {op}{attrs}(x)"
    else:
        values = ", ".join(map(str, axes))
        body = f"axes = Constant<value = int64[{len(axes)}] {{{values}}}>()\n y = {op}{attrs}(x, axes)"
    out = _reduced_shape(shape, axes, noop, keepdims)
    text = model_text(body, f"float{list(shape)} x".replace(" ", ""), f"float{out} y".replace(" ", ""), opset=opset)
    model = onnx.parser.parse_model(text)
    model.graph.output[0].type.tensor_type.shape.SetInParent()  # the text format cannot say "rank 0"
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes,noop", AXES, ids=lambda a: str(a).replace(" ", ""))
@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce(op, axes, noop, keepdims):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 4))
    if op == "ReduceLogSum":
        x = rng.uniform(0.5, 2.0, (2, 3, 4))  # log of a positive sum
    model = _reduce_model(op, (2, 3, 4), axes, noop, keepdims)
    check_adjoint(model, ["x"], inputs={"x": x.astype(np.float32)})


def test_reduce_needs_constant_axes():
    text = model_text("y = ReduceSum<keepdims: int = 1>(x, axes)", "float[2,3] x, int64[1] axes", "float[2,1] y",
                      opset=18)
    with pytest.raises(ValueError, match="axes.*must be a constant"):
        gradient_model(parse(text), ["x"])


def _ort_vjp(model, x, seed):
    session = ort.InferenceSession(gradient_model(model, ["x"]).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["grad/x"], {"x": x.astype(np.float32), "seed": seed.astype(np.float32)})[0]


def _torch_vjp(function, x, seed):
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    (function(t) * torch.tensor(seed, dtype=torch.float64)).sum().backward()
    return t.grad.numpy()


TIES = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [-1.0, 5.0, -1.0, 5.0]])


# Ties and kinks are not differentiable, so finite differences cannot judge them: torch's convention does.
@pytest.mark.parametrize("op,axes,keepdims,function", [
    ("ReduceMax", [1], 0, lambda t: torch.amax(t, dim=1)),
    ("ReduceMin", [-1], 1, lambda t: torch.amin(t, dim=-1, keepdim=True)),
    ("ReduceMax", None, 0, lambda t: torch.amax(t)),
    ("ReduceMin", [0], 0, lambda t: torch.amin(t, dim=0)),
], ids=["max-axis1", "min-last-keepdims", "max-all", "min-axis0"])
def test_reduce_extremum_ties_share_evenly(op, axes, keepdims, function):
    model = _reduce_model(op, TIES.shape, axes, 0, keepdims)
    seed = np.random.default_rng(8).standard_normal(_reduced_shape(TIES.shape, axes, 0, keepdims))
    np.testing.assert_allclose(_ort_vjp(model, TIES, seed), _torch_vjp(function, TIES, seed), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op,function", [
    ("ReduceL2", lambda t: torch.linalg.vector_norm(t, dim=1)),
    ("ReduceL1", lambda t: t.abs().sum(dim=1)),
])
def test_reduce_norm_at_zero_as_torch(op, function):
    x = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, -4.0]])  # a zero row (L2 kink) and a zero element (L1 kink)
    model = _reduce_model(op, x.shape, [1], 0, 0)
    seed = np.array([0.7, -1.3])
    np.testing.assert_allclose(_ort_vjp(model, x, seed), _torch_vjp(function, x, seed), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax(op, axis):
    text = model_text(f"y = {op}<axis: int = {axis}>(x)", "float[2,3,4] x", "float[2,3,4] y")
    check_adjoint(text, ["x"], inputs={"x": np.random.default_rng(9).normal(0, 2, (2, 3, 4)).astype(np.float32)})


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
def test_softmax_default_axis(op):
    check_adjoint(model_text(f"y = {op}(x)", "float[3,5] x", "float[3,5] y"), ["x"])


def test_pooled_head_symbolic_batch():
    # A channels-last classifier head (global average pool, then log-probabilities) with a symbolic batch.
    body = "axes = Constant<value = int64[2] {1, 2}>()\n p = ReduceMean<keepdims: int = 0>(x, axes)\n y = LogSoftmax(p)"
    text = model_text(body, "float[N,7,7,8] x", "float[N,8] y")
    x = np.random.default_rng(10).standard_normal((3, 7, 7, 8)).astype(np.float32)
    check_adjoint(text, ["x"], inputs={"x": x})
