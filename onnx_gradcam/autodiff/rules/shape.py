"""Ops that move or copy elements without changing them: the gradient moves (or sums) them back."""

from __future__ import annotations

import numpy as np

from ..context import GradContext, Step
from ..registry import rule


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(g: GradContext, s: Step):
    # The element order never changes: reshaping back to x's runtime shape covers 0, -1, allowzero and axes.
    return s.first(g.reshape_like(s.dy[0], s.x[0]))


@rule("Transpose")
def _transpose(g: GradContext, s: Step):
    perm = s.attr("perm", None) or list(reversed(range(g.rank(s.x[0]))))
    return s.first(g.op("Transpose", s.dy[0], perm=[int(i) for i in np.argsort(perm)]))


@rule("SpaceToDepth")
def _space_to_depth(g: GradContext, s: Step):
    # SpaceToDepth is the inverse of DCR DepthToSpace; both are permutations, so each is the other's adjoint.
    return s.first(g.op("DepthToSpace", s.dy[0], blocksize=s.attr("blocksize"), mode="DCR"))


@rule("DepthToSpace")
def _depth_to_space(g: GradContext, s: Step):
    block = s.attr("blocksize")
    dx = g.op("SpaceToDepth", s.dy[0], blocksize=block)  # channels ordered (row, column, channel): DCR
    if s.attr("mode", "DCR") == "CRD":  # reorder them to (channel, row, column)
        blocks_channels_positions = g.op("Concat", g.ints([0, block * block]), g.op("Shape", s.y[0], start=1, end=2),
                                         g.ints([-1]), axis=0)
        dx = g.op("Transpose", g.op("Reshape", dx, blocks_channels_positions), perm=[0, 2, 1, 3])
        dx = g.reshape_like(dx, s.x[0])
    return s.first(dx)


@rule("Expand")
def _expand(g: GradContext, s: Step):
    return s.first(g.unbroadcast(s.dy[0], s.x[0], s.y[0]))


@rule("Tile")
def _tile(g: GradContext, s: Step):
    # y viewed as [r0, d0, r1, d1, ...] (r: repeats, d: x's dims); x's gradient sums over the r axes.
    x, repeats = s.x
    rank = g.rank(x)
    column = g.ints([1])
    interleaved = g.op("Concat", g.op("Unsqueeze", repeats, column), g.op("Unsqueeze", g.op("Shape", x), column),
                       axis=1)
    tiles = g.op("Reshape", s.dy[0], g.op("Reshape", interleaved, g.ints([-1])))
    return s.first(g.op("ReduceSum", tiles, g.ints(range(0, 2 * rank, 2)), keepdims=0))
