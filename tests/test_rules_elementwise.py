"""Adjoint checks for unary elementwise rules, broadcasting arithmetic, and Where."""

import numpy as np
import pytest
import torch

from adjoint import check_adjoint, model_text

UNARY = {
    "Relu": "", "LeakyRelu": "<alpha: float = 0.2>", "Elu": "<alpha: float = 0.7>", "Selu": "",
    "Celu": "<alpha: float = 1.5>", "Sigmoid": "", "HardSigmoid": "<alpha: float = 0.3, beta: float = 0.4>",
    "HardSwish": "", "Tanh": "", "Softplus": "", "Softsign": "", "Erf": "", "Gelu": "",
    "Exp": "", "Neg": "", "Abs": "", "Identity": "", "Sin": "", "Cos": "",
}


# onnx's reference Erf (and so Gelu) computes in float32: torch is the float64 oracle for those.
TORCH_ORACLES = {
    "Erf": torch.special.erf,
    "Gelu": torch.nn.functional.gelu,
}


def _torch_oracle(function):
    return lambda feeds: function(torch.from_numpy(feeds["x"])).numpy()


@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary(op):
    text = model_text(f"y = {op}{UNARY[op]}(x)", "float[2,3,4,5] x", "float[2,3,4,5] y")
    # Scale inputs so the piecewise ops see both sides of every kink (HardSwish: -3 and 3).
    x = np.random.default_rng(1).normal(0, 3, (2, 3, 4, 5)).astype(np.float32)
    oracle = _torch_oracle(TORCH_ORACLES[op]) if op in TORCH_ORACLES else None
    check_adjoint(text, ["x"], inputs={"x": x}, oracle=oracle)


def test_gelu_tanh():
    text = model_text('y = Gelu<approximate: string = "tanh">(x)', "float[3,7] x", "float[3,7] y")
    check_adjoint(text, ["x"], oracle=_torch_oracle(lambda t: torch.nn.functional.gelu(t, approximate="tanh")))


@pytest.mark.parametrize("op", ["Log", "Sqrt", "Reciprocal"])
def test_positive_domain(op):
    x = np.random.default_rng(2).uniform(0.5, 3.0, (2, 3, 4)).astype(np.float32)
    check_adjoint(model_text(f"y = {op}(x)", "float[2,3,4] x", "float[2,3,4] y"), ["x"], inputs={"x": x})


@pytest.mark.parametrize("bounds", ["x, lo, hi", "x, lo", "x, , hi"])
def test_clip(bounds):
    inputs = "float[2,3,4] x, float lo, float hi"
    text = model_text(f"y = Clip({bounds})", inputs, "float[2,3,4] y")
    check_adjoint(text, ["x"], inputs={"lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)})


def test_prelu_broadcast_slope():
    text = model_text("y = PRelu(x, slope)", "float[2,3,4,5] x, float[3,1,1] slope", "float[2,3,4,5] y")
    check_adjoint(text, ["x", "slope"])


BINARY_SHAPES = [
    ("[2,3,4,5]", "[2,3,4,5]"),
    ("[2,3,4,5]", "[3,1,1]"),      # per-channel constant
    ("[2,1,4,5]", "[1,3,1,5]"),    # both sides broadcast
    ("[5]", "[2,3,4,5]"),          # lower rank on the left
    ("[2,3,4,5]", ""),             # scalar (ONNX text writes a rank-0 tensor with no brackets)
]


def _dims(text):
    return tuple(eval(text)) if text else ()


def _broadcast(a, b):
    return list(np.broadcast_shapes(_dims(a), _dims(b)))


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div", "Max", "Min"])
@pytest.mark.parametrize("shapes", BINARY_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_binary(op, shapes):
    a, b = shapes
    y = str(_broadcast(a, b)).replace(" ", "")
    rng = np.random.default_rng(3)
    feeds = {"a": rng.standard_normal(_dims(a)).astype(np.float32),
             "b": rng.uniform(0.5, 2.0, _dims(b)).astype(np.float32)}  # Div: keep b away from zero
    check_adjoint(model_text(f"y = {op}(a, b)", f"float{a} a, float{b} b", f"float{y} y"), ["a", "b"], inputs=feeds)


@pytest.mark.parametrize("op", ["Sum", "Mean", "Max", "Min"])
def test_variadic(op):
    text = model_text(f"y = {op}(a, b, c)", "float[2,3,4] a, float[3,4] b, float[2,1,4] c", "float[2,3,4] y")
    check_adjoint(text, ["a", "b", "c"])


def test_pow():
    rng = np.random.default_rng(4)
    feeds = {"a": rng.uniform(0.5, 2.0, (2, 3, 4)).astype(np.float32),
             "p": rng.uniform(1.0, 3.0, (4,)).astype(np.float32)}
    check_adjoint(model_text("y = Pow(a, p)", "float[2,3,4] a, float[4] p", "float[2,3,4] y"), ["a", "p"],
                  inputs=feeds)


def test_pow_constant_exponent():
    text = model_text("two = Constant<value = float {2.0}>()\n y = Pow(a, two)", "float[2,3,4] a", "float[2,3,4] y")
    check_adjoint(text, ["a"])


def test_where_broadcast():
    rng = np.random.default_rng(5)
    text = model_text("y = Where(c, a, b)", "bool[3,4] c, float[2,3,4] a, float[4] b", "float[2,3,4] y")
    check_adjoint(text, ["a", "b"], inputs={"c": rng.random((3, 4)) > 0.5})


def test_cast_between_floats():
    text = model_text("h = Cast<to = 11>(x)\n y = Cast<to = 1>(h)", "float[3,4] x", "float[3,4] y")
    check_adjoint(text, ["x"])
