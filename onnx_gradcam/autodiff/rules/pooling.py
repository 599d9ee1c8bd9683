"""Pooling. MaxPool routes each gradient to the element its Indices output picked; average pools spread it
back over their windows with a ConvTranspose of ones, scaled by the runtime's own divisors."""

from __future__ import annotations

import numpy as np
from onnx import helper

from ...graph.builder import node_attributes
from ..context import GradContext, Step
from ..registry import rule
from .conv import explicit_pads, transposed_window_grad
from .reduction import elements_per_output


def scatter_add_flat(g: GradContext, like: str, flat_indices: str, values: str) -> str:
    """A tensor shaped like ``like``: zeros, plus ``values`` added at the flat positions ``flat_indices``."""
    size = g.op("Reshape", g.op("Size", like), g.ints([1]))
    zeros = g.op("ConstantOfShape", size, value=helper.make_tensor("zero", g.view.elem_type(like), [1], [0]))
    flat = g.scatter_add(zeros, g.op("Reshape", flat_indices, g.ints([-1])), g.op("Reshape", values, g.ints([-1])))
    return g.reshape_like(flat, like)


@rule("MaxPool")
def _max_pool(g: GradContext, s: Step):
    if len(s.y) > 1 and s.y[1] and s.attr("storage_order", 0) == 0:
        indices = s.y[1]
    else:  # recompute the pooling with its Indices output; the forward node stays as it is
        indices = g.op("MaxPool", s.x[0], outputs=2, **node_attributes(s.node, drop=("storage_order",)))[1]
    return s.first(scatter_add_flat(g, s.x[0], indices, s.dy[0]))


@rule("GlobalMaxPool")
def _global_max_pool(g: GradContext, s: Step):
    # One winner per channel (the first, as torch's adaptive max pool), not every tied element.
    x = s.x[0]
    flat_shape = g.ints([0, 0, -1])
    winner = g.op("ArgMax", g.op("Reshape", x, flat_shape), axis=2, keepdims=1)
    routed = g.op("ScatterElements", g.op("Reshape", g.zeros_like(x), flat_shape), winner,
                  g.op("Reshape", s.dy[0], g.ints([0, 0, 1])), axis=2)
    return s.first(g.reshape_like(routed, x))


@rule("GlobalAveragePool")
def _global_average_pool(g: GradContext, s: Step):
    x = s.x[0]
    count = elements_per_output(g, x, list(range(2, g.rank(x))))
    return s.first(g.op("Div", g.op("Expand", s.dy[0], g.op("Shape", x)), count))


@rule("AveragePool")
def _average_pool(g: GradContext, s: Step):
    # dx spreads dy / divisor over each window. The divisors are the runtime's own, whatever ceil_mode and
    # count_include_pad make them: its average of ones over the count of ones in each window, both computed
    # at run time on ones of x's size.
    x = s.x[0]
    kernel = list(s.attr("kernel_shape"))
    rank = len(kernel)
    ones = g.op("Expand", g.scalar(1.0, x), g.op("Concat", g.ints([1, 1]), g.op("Shape", x, start=2), axis=0))
    ones_kernel = g.const(np.ones([1, 1, *kernel], g.np_dtype(x)), hint="ones_kernel")
    averaged_ones = g.op("AveragePool", ones, **node_attributes(s.node))
    # The counting windows may include one more than the pool's (see _counting_window): cut to its size.
    counted_ones = g.op("Slice", g.op("Conv", ones, ones_kernel, **_counting_window(s, rank)), g.ints([0] * rank),
                        g.op("Shape", averaged_ones, start=2), g.ints(range(2, 2 + rank)))
    scaled = g.op("Mul", s.dy[0], g.op("Div", averaged_ones, counted_ones))
    per_channel = g.op("Reshape", scaled, g.ints([-1, 1] + [0] * rank))
    return s.first(g.reshape_like(transposed_window_grad(g, s, per_channel, ones_kernel), x))


def _counting_window(s: Step, rank: int) -> dict:
    """Conv attributes whose windows are the pool's, for summing ones over them.

    In ceil mode the pool's last window may hang past the end pad, by at most stride - 1: the end pads grow by
    that much. Where that makes a window more than the pool has (one starting in the end pad, which ceil mode
    drops), the caller cuts it off. onnx's shape inference keeps that window, and so does ONNX Runtime's
    load-time inference on a model of fixed sizes (its kernels drop it): such a gradient model fails to load
    with "Incompatible dimensions", loudly, never with a wrong map (strict xfails in tests/test_rules_pooling.py).
    """
    strides = list(s.attr("strides", [1] * rank))
    window = dict(strides=strides, dilations=list(s.attr("dilations", [1] * rank)))
    pads = explicit_pads(s, rank)
    if pads is None:
        return dict(window, auto_pad=s.attr("auto_pad"))
    overhang = [(stride - 1) * s.attr("ceil_mode", 0) for stride in strides]
    return dict(window, pads=pads[:rank] + [end + extra for end, extra in zip(pads[rank:], overhang)])
