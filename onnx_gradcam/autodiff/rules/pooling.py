"""Pooling. MaxPool routes each gradient to the element its Indices output picked; average pools spread it
back over their windows with a ConvTranspose of ones, scaled by the runtime's own divisors."""

from __future__ import annotations

import numpy as np
from onnx import helper

from ...graph.builder import node_attributes
from ...graph.windows import pooled_size
from ..context import GradContext, Step
from ..registry import rule
from .conv import spatial_shape, transposed_window_grad, window_attrs


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
    count = g.op("Cast", g.op("Div", g.op("Size", x), g.op("Size", s.y[0])), to=g.view.elem_type(x))
    return s.first(g.op("Div", g.op("Expand", s.dy[0], g.op("Shape", x)), count))


@rule("AveragePool")
def _average_pool(g: GradContext, s: Step):
    x = s.x[0]
    kernel = list(s.attr("kernel_shape"))
    rank = len(kernel)
    strides, dilations, pads = window_attrs(g, s, kernel)
    in_spatial = spatial_shape(g, s, x)
    out_spatial = [pooled_size(*args, s.attr("ceil_mode", 0))
                   for args in zip(in_spatial, kernel, strides, dilations, pads[:rank], pads[rank:])]
    # ceil_mode adds windows past the end pad; extend the end pads so a plain window sum sees them too.
    for i in range(rank):
        reached = strides[i] * (out_spatial[i] - 1) + (kernel[i] - 1) * dilations[i] + 1
        pads[rank + i] = max(pads[rank + i], reached - in_spatial[i] - pads[i])
    dtype = g.np_dtype(x)
    ones_input = g.const(np.ones([1, 1, *in_spatial], dtype), hint="ones")
    ones_kernel = g.const(np.ones([1, 1, *kernel], dtype), hint="ones_kernel")
    # 1/divisor of each window, whatever rule the runtime uses: its average of ones over the count of ones.
    # (The Reshape restates the size: onnx's shape inference keeps ceil-mode windows that start in the end pad.)
    averaged_ones = g.op("Reshape", g.op("AveragePool", ones_input, **node_attributes(s.node)),
                         g.ints([1, 1, *out_spatial]))
    counted_ones = g.op("Conv", ones_input, ones_kernel, strides=strides, dilations=dilations, pads=pads)
    scaled = g.op("Mul", s.dy[0], g.op("Div", averaged_ones, counted_ones))
    per_channel = g.op("Reshape", scaled, g.ints([-1, 1, *out_spatial]))
    dx = transposed_window_grad(g, per_channel, ones_kernel, in_spatial, out_spatial, kernel, strides, dilations,
                                pads)
    return s.first(g.reshape_like(dx, x))
