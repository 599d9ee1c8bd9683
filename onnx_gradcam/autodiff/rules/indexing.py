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
    crop = _unit_step_slice_pads(g, s)
    if crop is None:
        dx = reselect(g, s)
    else:  # a plain crop: pad the gradient back with zeros
        axes, pads = crop
        dx = g.op("Pad", s.dy[0], g.ints(pads), "", g.ints(axes))
    return s.first(dx)


def _unit_step_slice_pads(g: GradContext, s: Step) -> Optional[tuple[list[int], list[int]]]:
    """(axes, pads) that undo a Slice with constant starts/ends/axes, unit steps and static sliced dims; else None."""
    starts, ends = g.constant(s.x[1]), g.constant(s.x[2])
    axes = g.constant(s.x[3]) if s.has_input(3) else np.arange(len(starts if starts is not None else []))
    steps = g.constant(s.x[4]) if s.has_input(4) else np.ones(len(axes), np.int64)
    shape = g.shape(s.x[0])
    if starts is None or ends is None or axes is None or steps is None or shape is None or np.any(steps != 1):
        return None
    axes = [normalize_axis(int(a), len(shape)) for a in axes]
    if not all(isinstance(shape[a], int) for a in axes):
        return None
    begins, finals = [], []
    for axis, start, end in zip(axes, starts, ends):
        size = shape[axis]
        start, end = (int(np.clip(v + size if v < 0 else v, 0, size)) for v in (start, end))
        begins.append(start)
        finals.append(size - max(start, end))
    return axes, begins + finals


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
