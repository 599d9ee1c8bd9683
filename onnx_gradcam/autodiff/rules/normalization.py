"""Normalization layers. Statistics computed from the input (layer, instance and group norm) are differentiated
through; BatchNormalization in an inference graph is a fixed per-channel affine map. Scales and biases are weights:
only the input gets a gradient."""

from __future__ import annotations

import numpy as np

from ...graph.builder import normalize_axis
from ...graph.model import default_opset
from ..context import GradContext, Step
from ..registry import rule


def normalized_backward(g: GradContext, x: str, dxhat: str, axes: list[int], epsilon: float, like: str) -> str:
    """The gradient of x for xhat = (x - mean(x)) / sqrt(var(x) + epsilon), statistics over ``axes``.

    dx = inv_std * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), means over ``axes``. ``like`` is a forward
    tensor of x's type.
    """
    axes_const = g.ints(axes)

    def mean(t: str) -> str:
        return g.op("ReduceMean", t, axes_const, keepdims=1)

    centered = g.op("Sub", x, mean(x))
    variance = mean(g.op("Mul", centered, centered))
    inv_std = g.op("Reciprocal", g.op("Sqrt", g.op("Add", variance, g.scalar(epsilon, like))))
    xhat = g.op("Mul", centered, inv_std)
    projected = g.op("Add", mean(dxhat), g.op("Mul", xhat, mean(g.op("Mul", dxhat, xhat))))
    return g.op("Mul", inv_std, g.op("Sub", dxhat, projected))


def per_channel(g: GradContext, vector: str, rank: int) -> str:
    """A (C,) vector shaped (C, 1, ..., 1) to broadcast over axis 1 of a rank-``rank`` (N, C, ...) tensor."""
    return g.op("Reshape", vector, g.ints([-1] + [1] * (rank - 2)))


def _input_only(s: Step, weights: str) -> None:
    if any(s.wants[1:]):
        raise ValueError(f"{s.node.op_type} node {s.name!r}: its {weights} depend on the layer; only the data input "
                         "can be differentiated (make them constants or choose a layer after this node)")
    if any(dy is not None for dy in s.dy[1:]):
        raise ValueError(f"{s.node.op_type} node {s.name!r}: a gradient flows into its statistics outputs "
                         f"({', '.join(s.y[1:])}); only its first output can be differentiated through")


@rule("BatchNormalization")
def _batch_normalization(g: GradContext, s: Step):
    # Inference mode: y = (x - mean) * scale / sqrt(var + epsilon) + bias with fixed statistics.
    if s.attr("training_mode", 0):
        raise ValueError(f"BatchNormalization node {s.name!r} is in training mode (batch statistics); only "
                         "inference-mode graphs (training_mode=0) can be differentiated")
    _input_only(s, "scale, bias, mean and variance")
    x, scale, _, _, variance = s.x[:5]
    factor = g.op("Div", scale, g.op("Sqrt", g.op("Add", variance, g.scalar(s.attr("epsilon", 1e-5), x))))
    return s.first(g.op("Mul", s.dy[0], per_channel(g, factor, g.rank(x))))


@rule("LayerNormalization")
def _layer_normalization(g: GradContext, s: Step):
    _input_only(s, "scale and bias")
    x, scale = s.x[:2]
    rank = g.rank(x)
    axes = list(range(normalize_axis(s.attr("axis", -1), rank), rank))
    dxhat = g.op("Mul", s.dy[0], scale)
    return s.first(normalized_backward(g, x, dxhat, axes, s.attr("epsilon", 1e-5), x))


@rule("InstanceNormalization")
def _instance_normalization(g: GradContext, s: Step):
    _input_only(s, "scale and bias")
    x, scale = s.x[:2]
    rank = g.rank(x)
    dxhat = g.op("Mul", s.dy[0], per_channel(g, scale, rank))
    return s.first(normalized_backward(g, x, dxhat, list(range(2, rank)), s.attr("epsilon", 1e-5), x))


@rule("GroupNormalization")
def _group_normalization(g: GradContext, s: Step):
    # Statistics per (sample, group): view x as (N, G, C/G * spatial) and normalize over the last axis.
    _input_only(s, "scale and bias")
    x, scale = s.x[:2]
    groups = s.attr("num_groups")
    grouped = g.ints([0, groups, -1])
    if default_opset(g.view.model) >= 21:  # scale per channel
        dxhat = g.op("Reshape", g.op("Mul", s.dy[0], per_channel(g, scale, g.rank(x))), grouped)
    else:  # opset 18-20: scale per group
        dxhat = g.op("Mul", g.op("Reshape", s.dy[0], grouped), g.op("Reshape", scale, g.ints([groups, 1])))
    dx = normalized_backward(g, g.op("Reshape", x, grouped), dxhat, [2], s.attr("epsilon", 1e-5), x)
    return s.first(g.reshape_like(dx, x))


def _channel_window_sum(g: GradContext, t: str, size: int, before: int, after: int, like: str) -> str:
    """Sum of ``t`` over channels [c - before, c + after] (zeros beyond the ends), as a Conv over (N, 1, C, rest).

    ``t`` is shaped like the forward tensor ``like``."""
    columns = g.op("Unsqueeze", g.op("Reshape", t, g.ints([0, 0, -1])), g.ints([1]))
    ones = g.const(np.ones([1, 1, size, 1], g.np_dtype(like)), hint="ones_window")
    return g.reshape_like(g.op("Conv", columns, ones, pads=[before, 0, after, 0]), like)


@rule("LRN")
def _lrn(g: GradContext, s: Step):
    # y = x * d^-beta, d = bias + alpha/size * (sum of x^2 over the channel window [c - lo, c + hi]).
    x, dy = s.x[0], s.dy[0]
    size = s.attr("size")
    alpha, beta, bias = s.attr("alpha", 1e-4), s.attr("beta", 0.75), s.attr("bias", 1.0)
    lo, hi = (size - 1) // 2, size // 2  # floor and ceil of (size - 1) / 2, as the spec says
    square_sum = _channel_window_sum(g, g.op("Mul", x, x), size, lo, hi, x)
    d = g.op("Add", g.op("Mul", square_sum, g.scalar(alpha / size, x)), g.scalar(bias, x))
    d_neg_beta = g.op("Pow", d, g.scalar(-beta, x))
    # Channel c's d sees x_j for j in its window; the transposed window [j - hi, j + lo] gathers them back.
    through_d = g.op("Mul", dy, g.op("Mul", x, g.op("Div", d_neg_beta, d)))
    gathered = _channel_window_sum(g, through_d, size, hi, lo, x)
    through_d_term = g.op("Mul", g.op("Mul", x, gathered), g.scalar(2 * alpha * beta / size, x))
    dx = g.op("Sub", g.op("Mul", dy, d_neg_beta), through_d_term)
    return s.first(dx)
