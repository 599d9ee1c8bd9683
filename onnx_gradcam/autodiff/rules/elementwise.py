"""Unary elementwise ops: dx = dy * f'(x), with f' written from x or, where cheaper, from y."""

from __future__ import annotations

import math

from ..context import GradContext, Step
from ..registry import rule


def _chain(g: GradContext, s: Step, derivative: str) -> list:
    return s.first(g.op("Mul", s.dy[0], derivative))


@rule("Identity", "Dropout")
def _identity(g: GradContext, s: Step):
    # Dropout in an inference graph passes its input through (the mask output carries no gradient).
    return s.first(s.dy[0])


@rule("Neg")
def _neg(g: GradContext, s: Step):
    return s.first(g.op("Neg", s.dy[0]))


@rule("Relu")
def _relu(g: GradContext, s: Step):
    # As torch's threshold_backward: the gradient passes where the output is positive.
    return s.first(g.where_else_zero(g.op("Greater", s.y[0], g.scalar(0.0, s.y[0])), s.dy[0], s.y[0]))


@rule("LeakyRelu")
def _leaky_relu(g: GradContext, s: Step):
    x = s.x[0]
    slope = g.op("Where", g.op("Greater", x, g.scalar(0.0, x)), g.scalar(1.0, x), g.scalar(s.attr("alpha", 0.01), x))
    return _chain(g, s, slope)


@rule("Elu")
def _elu(g: GradContext, s: Step):
    x, y = s.x[0], s.y[0]
    alpha = s.attr("alpha", 1.0)
    negative_side = g.op("Add", y, g.scalar(alpha, x))  # alpha * exp(x) = y + alpha for x <= 0
    return _chain(g, s, g.op("Where", g.op("Greater", x, g.scalar(0.0, x)), g.scalar(1.0, x), negative_side))


@rule("Selu")
def _selu(g: GradContext, s: Step):
    x = s.x[0]
    alpha, gamma = s.attr("alpha", 1.67326319217681884765625), s.attr("gamma", 1.05070102214813232421875)
    negative_side = g.op("Mul", g.op("Exp", x), g.scalar(alpha * gamma, x))
    return _chain(g, s, g.op("Where", g.op("Greater", x, g.scalar(0.0, x)), g.scalar(gamma, x), negative_side))


@rule("Celu")
def _celu(g: GradContext, s: Step):
    x = s.x[0]
    alpha = s.attr("alpha", 1.0)
    negative_side = g.op("Exp", g.op("Div", x, g.scalar(alpha, x)))
    return _chain(g, s, g.op("Where", g.op("Greater", x, g.scalar(0.0, x)), g.scalar(1.0, x), negative_side))


@rule("PRelu")
def _prelu(g: GradContext, s: Step):
    x, slope = s.x
    positive = g.op("Greater", x, g.scalar(0.0, x))
    dx = g.op("Mul", s.dy[0], g.op("Where", positive, g.scalar(1.0, x), slope)) if s.wants[0] else None
    dslope = None
    if s.wants[1]:
        dslope = g.unbroadcast(g.op("Where", positive, g.scalar(0.0, x), g.op("Mul", s.dy[0], x)), slope, s.y[0])
    return [dx, dslope]


@rule("Clip")
def _clip(g: GradContext, s: Step):
    # As torch's clamp, relu6 and hardtanh and TensorFlow's relu6: the gradient passes strictly inside,
    # min < x < max, and is 0 at a bound (either bound may be absent).
    x = s.x[0]
    inside = None
    for index, compare in ((1, "Greater"), (2, "Less")):
        if s.has_input(index):
            test = g.op(compare, x, s.x[index])
            inside = test if inside is None else g.op("And", inside, test)
    dx = s.dy[0] if inside is None else g.where_else_zero(inside, s.dy[0], x)
    return s.first(dx)


@rule("Sigmoid")
def _sigmoid(g: GradContext, s: Step):
    y = s.y[0]
    return _chain(g, s, g.op("Mul", y, g.op("Sub", g.scalar(1.0, y), y)))


@rule("HardSigmoid")
def _hard_sigmoid(g: GradContext, s: Step):
    x = s.x[0]
    alpha, beta = s.attr("alpha", 0.2), s.attr("beta", 0.5)
    pre = g.op("Add", g.op("Mul", x, g.scalar(alpha, x)), g.scalar(beta, x))
    inside = g.op("And", g.op("Greater", pre, g.scalar(0.0, x)), g.op("Less", pre, g.scalar(1.0, x)))
    return s.first(g.op("Mul", g.where_else_zero(inside, s.dy[0], x), g.scalar(alpha, x)))


@rule("HardSwish")
def _hard_swish(g: GradContext, s: Step):
    # y = x * clip(x/6 + 1/2, 0, 1); as torch: 0 up to -3, x/3 + 1/2 strictly between, 1 from 3 on.
    x = s.x[0]
    middle = g.op("Add", g.op("Div", x, g.scalar(3.0, x)), g.scalar(0.5, x))
    upper = g.op("Where", g.op("Less", x, g.scalar(3.0, x)), middle, g.scalar(1.0, x))
    return _chain(g, s, g.op("Where", g.op("LessOrEqual", x, g.scalar(-3.0, x)), g.scalar(0.0, x), upper))


@rule("Tanh")
def _tanh(g: GradContext, s: Step):
    y = s.y[0]
    return _chain(g, s, g.op("Sub", g.scalar(1.0, y), g.op("Mul", y, y)))


@rule("Softplus")
def _softplus(g: GradContext, s: Step):
    return _chain(g, s, g.op("Sigmoid", s.x[0]))


@rule("Softsign")
def _softsign(g: GradContext, s: Step):
    x = s.x[0]
    denominator = g.op("Add", g.scalar(1.0, x), g.op("Abs", x))
    return s.first(g.op("Div", s.dy[0], g.op("Mul", denominator, denominator)))


@rule("Erf")
def _erf(g: GradContext, s: Step):
    x = s.x[0]
    gauss = g.op("Exp", g.op("Neg", g.op("Mul", x, x)))
    return _chain(g, s, g.op("Mul", gauss, g.scalar(2.0 / math.sqrt(math.pi), x)))


@rule("Gelu")
def _gelu(g: GradContext, s: Step):
    x = s.x[0]
    if s.attr("approximate", "none") == "tanh":
        # y = x/2 (1 + tanh(u)), u = c (x + 0.044715 x^3)
        c = math.sqrt(2.0 / math.pi)
        x2 = g.op("Mul", x, x)
        u = g.op("Mul", g.op("Mul", x, g.op("Add", g.scalar(1.0, x), g.op("Mul", x2, g.scalar(0.044715, x)))),
                 g.scalar(c, x))
        t = g.op("Tanh", u)
        du = g.op("Mul", g.op("Add", g.scalar(1.0, x), g.op("Mul", x2, g.scalar(3 * 0.044715, x))), g.scalar(c, x))
        sech2 = g.op("Sub", g.scalar(1.0, x), g.op("Mul", t, t))
        half = g.scalar(0.5, x)
        derivative = g.op("Add", g.op("Mul", g.op("Add", g.scalar(1.0, x), t), half),
                          g.op("Mul", g.op("Mul", g.op("Mul", x, half), sech2), du))
        return _chain(g, s, derivative)
    # y = x Phi(x): y' = Phi(x) + x phi(x)
    cdf = g.op("Mul", g.op("Add", g.op("Erf", g.op("Mul", x, g.scalar(1 / math.sqrt(2.0), x))), g.scalar(1.0, x)),
               g.scalar(0.5, x))
    pdf = g.op("Mul", g.op("Exp", g.op("Mul", g.op("Mul", x, x), g.scalar(-0.5, x))),
               g.scalar(1 / math.sqrt(2 * math.pi), x))
    return _chain(g, s, g.op("Add", cdf, g.op("Mul", x, pdf)))


@rule("Exp")
def _exp(g: GradContext, s: Step):
    return _chain(g, s, s.y[0])


@rule("Log")
def _log(g: GradContext, s: Step):
    return s.first(g.op("Div", s.dy[0], s.x[0]))


@rule("Sqrt")
def _sqrt(g: GradContext, s: Step):
    y = s.y[0]
    return s.first(g.op("Div", s.dy[0], g.op("Mul", y, g.scalar(2.0, y))))


@rule("Reciprocal")
def _reciprocal(g: GradContext, s: Step):
    y = s.y[0]
    return s.first(g.op("Neg", g.op("Mul", s.dy[0], g.op("Mul", y, y))))


@rule("Abs")
def _abs(g: GradContext, s: Step):
    return _chain(g, s, g.op("Sign", s.x[0]))


@rule("Sin")
def _sin(g: GradContext, s: Step):
    return _chain(g, s, g.op("Cos", s.x[0]))


@rule("Cos")
def _cos(g: GradContext, s: Step):
    return s.first(g.op("Neg", g.op("Mul", s.dy[0], g.op("Sin", s.x[0]))))


@rule("Cast")
def _cast(g: GradContext, s: Step):
    # Only float-to-float casts are on a gradient path; the gradient goes back in the input's type.
    return s.first(g.op("Cast", s.dy[0], to=g.view.elem_type(s.x[0])))
