"""Ops that select, join or cut: each element of the output is a copy of one element of an input (or a constant).

Where the adjoint has a cheap native form it is used (Concat -> Split, Split -> Concat, unit-step Slice and
constant Pad -> Pad, GatherElements -> ScatterElements). Elsewhere :func:`selection_adjoint` is exact for any op
that only selects: it runs the op on x's flat positions and scatter-adds dy to the positions it picked.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ...graph.builder import node_attributes, normalize_axis
from ..context import GradContext, Step
from ..registry import rule
from .pooling import scatter_add_flat


def selection_adjoint(g: GradContext, x: str, dy: str, select: Callable[[str], str]) -> str:
    """The gradient of ``x`` through ``y = select(x)``, for a ``select`` that copies elements of x (repeats allowed)."""
    count = g.op("Size", x)
    positions = g.op("Range", g.const(0, np.int64), count, g.const(1, np.int64))
    return scatter_add_flat(g, x, select(g.reshape_like(positions, x)), dy)


def reselect(g: GradContext, s: Step, inputs: Optional[list[str]] = None) -> str:
    """:func:`selection_adjoint` with the forward op itself (its other ``inputs`` and attributes) as the selection."""
    attrs = node_attributes(s.node)
    inputs = s.x[1:] if inputs is None else inputs
    return selection_adjoint(g, s.x[0], s.dy[0], lambda positions: g.op(s.node.op_type, positions, *inputs, **attrs))


def _axis(g: GradContext, s: Step) -> int:
    return normalize_axis(s.attr("axis", 0), g.rank(s.x[0]))


@rule("Concat")
def _concat(g: GradContext, s: Step):
    axis = _axis(g, s)
    sizes = g.op("Concat", *[g.op("Shape", x, start=axis, end=axis + 1) for x in s.x], axis=0)
    pieces = g.op("Split", s.dy[0], sizes, axis=axis, outputs=len(s.x))
    pieces = pieces if len(s.x) > 1 else [pieces]
    return [piece if want else None for piece, want in zip(pieces, s.wants)]


@rule("Split")
def _split(g: GradContext, s: Step):
    # Outputs nothing flows back through contribute zeros of their own shape.
    pieces = [dy if dy is not None else g.zeros_like(y) for dy, y in zip(s.dy, s.y)]
    dx = g.op("Concat", *pieces, axis=_axis(g, s))
    return s.first(dx)


@rule("Slice")
def _slice(g: GradContext, s: Step):
    starts = g.constant(s.x[1])
    axes = g.constant(s.x[3]) if s.has_input(3) else np.arange(len(starts if starts is not None else []))
    steps = g.constant(s.x[4]) if s.has_input(4) else np.ones(1)
    if starts is None or axes is None or steps is None or np.any(steps != 1):
        return s.first(reselect(g, s))
    # A plain crop: pad the gradient back with zeros, before each axis by its start (negative ones count from
    # the end, both clamped to the axis as the spec does) and after it by what the crop left out there.
    axes = g.ints(axes)
    size = g.op("Gather", g.op("Shape", s.x[0]), axes)
    from_end = g.op("Mul", size, g.ints(starts < 0))
    before = g.op("Max", g.op("Min", g.op("Add", g.ints(starts), from_end), size), g.ints([0]))
    after = g.op("Sub", g.op("Sub", size, before), g.op("Gather", g.op("Shape", s.y[0]), axes))
    return s.first(g.op("Pad", s.dy[0], g.op("Concat", before, after, axis=0), "", axes))


@rule("Gather", "GatherND")
def _gather(g: GradContext, s: Step):
    return s.first(reselect(g, s))


@rule("GatherElements")
def _gather_elements(g: GradContext, s: Step):
    data, indices = s.x
    dx = g.scatter_add(g.zeros_like(data), indices, s.dy[0], axis=s.attr("axis", 0))
    return s.first(dx)


@rule("Pad")
def _pad(g: GradContext, s: Step):
    pads, dy = s.x[1], s.dy[0]
    axes = s.x[3] if s.has_input(3) else ""
    grads = [None] * len(s.x)
    mode = s.attr("mode", "constant")
    if mode == "constant":
        # y[i + begin] = x[i]: the adjoint pads dy by the opposite amounts (a crop where x was padded, zeros
        # where x was cropped); the padding value receives what fell on the padded places.
        dx = g.op("Pad", dy, g.op("Neg", pads), "", axes)
        if len(s.x) > 2 and s.wants[2]:
            spilled = g.op("Sub", g.op("ReduceSum", dy, keepdims=0), g.op("ReduceSum", dx, keepdims=0))
            grads[2] = g.reshape_like(spilled, s.x[2])
    else:  # edge, reflect, wrap copy elements of x
        dx = reselect(g, s, [pads, "", axes])  # no padding value: it would not match the int64 positions
    grads[0] = dx if s.wants[0] else None
    return grads
