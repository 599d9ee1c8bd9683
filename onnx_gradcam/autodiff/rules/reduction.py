"""Reductions and softmax. A reduction's gradient is its output gradient, put back in keepdims form so it
broadcasts over the reduced axes, times the derivative of the reduced expression with respect to each element."""

from __future__ import annotations

import functools

from ...graph.builder import normalize_axis
from ..context import GradContext, Step
from ..registry import rule


def reduce_axes(g: GradContext, s: Step) -> list[int]:
    """The sorted non-negative axes a Reduce* node reduces; ``[]`` when it reduces nothing (elementwise).

    Opset 18+ form: axes are input 1; absent or empty means every axis, or none with noop_with_empty_axes=1.
    """
    rank = g.rank(s.x[0])
    axes = [int(a) for a in g.require_constant(s, 1, "axes").reshape(-1)] if s.has_input(1) else []
    if axes:
        return sorted(normalize_axis(a, rank) for a in axes)
    return [] if s.attr("noop_with_empty_axes", 0) else list(range(rank))


def kept(g: GradContext, s: Step, name: str, axes: list[int]) -> str:
    """``name`` (shaped like the node's output) in keepdims form, so it broadcasts against the input."""
    if s.attr("keepdims", 1) or not axes:
        return name
    return g.op("Unsqueeze", name, g.ints(axes))


def _reduce_grads(local):
    """A rule from ``local(g, s, x, dy, y, axes)``: the input gradient with dy and y already in keepdims form.

    The rule keeps ``local``'s name, so errors about it name the reduction."""

    @functools.wraps(local)
    def grad(g: GradContext, s: Step):
        axes = reduce_axes(g, s)
        dx = local(g, s, s.x[0], kept(g, s, s.dy[0], axes), kept(g, s, s.y[0], axes), axes)
        return s.first(dx)

    return grad


def _spread(g: GradContext, x: str, dy: str) -> str:
    return g.op("Expand", dy, g.op("Shape", x))


def elements_per_output(g: GradContext, x: str, axes: list[int]) -> str:
    """How many elements of ``x`` each output of a mean over ``axes`` averages, in x's type: the product of
    those axes' runtime sizes (not Size(x) / Size(y), an integer 0 / 0 on an empty batch)."""
    sizes = g.op("Gather", g.op("Shape", x), g.ints(axes))
    return g.op("Cast", g.op("ReduceProd", sizes, keepdims=0), to=g.view.elem_type(x))


@rule("ReduceSum")
@_reduce_grads
def _reduce_sum(g, s, x, dy, y, axes):
    return _spread(g, x, dy)


@rule("ReduceMean")
@_reduce_grads
def _reduce_mean(g, s, x, dy, y, axes):
    # Elements per output value, from runtime sizes so a symbolic dimension is no obstacle.
    return g.op("Div", _spread(g, x, dy), elements_per_output(g, x, axes))


@rule("ReduceMax", "ReduceMin")
@_reduce_grads
def _reduce_extremum(g, s, x, dy, y, axes):
    # Tied extrema share the gradient evenly, as torch.amax / torch.amin do.
    hits = g.mask(g.op("Equal", x, y), x)
    count = g.op("ReduceSum", hits, g.ints(axes), keepdims=1) if axes else hits
    return g.op("Mul", hits, g.op("Div", dy, count))


@rule("ReduceL2")
@_reduce_grads
def _reduce_l2(g, s, x, dy, y, axes):
    # x / ||x||, and 0 where the norm is 0, as torch.linalg.vector_norm.
    nonzero = g.op("Not", g.op("Equal", y, g.scalar(0.0, x)))
    return g.op("Mul", x, g.where_else_zero(nonzero, g.op("Div", dy, y), x))


@rule("ReduceL1")
@_reduce_grads
def _reduce_l1(g, s, x, dy, y, axes):
    return g.op("Mul", dy, g.op("Sign", x))  # Sign(0) = 0, as torch's abs backward


@rule("ReduceSumSquare")
@_reduce_grads
def _reduce_sum_square(g, s, x, dy, y, axes):
    return g.op("Mul", g.op("Mul", dy, x), g.scalar(2.0, x))


@rule("ReduceLogSumExp")
@_reduce_grads
def _reduce_log_sum_exp(g, s, x, dy, y, axes):
    return g.op("Mul", dy, g.op("Exp", g.op("Sub", x, y)))  # softmax over the reduced axes


@rule("ReduceLogSum")
@_reduce_grads
def _reduce_log_sum(g, s, x, dy, y, axes):
    return _spread(g, x, g.op("Mul", dy, g.op("Exp", g.op("Neg", y))))  # 1 / sum(x) = exp(-y)


@rule("Softmax")
def _softmax(g: GradContext, s: Step):
    y, dy = s.y[0], s.dy[0]
    inner = g.op("ReduceSum", g.op("Mul", dy, y), g.ints([s.attr("axis", -1)]), keepdims=1)
    return s.first(g.op("Mul", y, g.op("Sub", dy, inner)))


@rule("LogSoftmax")
def _log_softmax(g: GradContext, s: Step):
    y, dy = s.y[0], s.dy[0]
    total = g.op("ReduceSum", dy, g.ints([s.attr("axis", -1)]), keepdims=1)
    return s.first(g.op("Sub", dy, g.op("Mul", g.op("Exp", y), total)))
