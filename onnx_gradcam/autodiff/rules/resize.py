"""Resize. It is linear in X and separable: along each resized axis, y = sum_i A[i, o] x[i] for a weight matrix A
(input length x output length), so dX applies A's transpose to dY axis by axis.

A is the runtime's own: the forward Resize (same mode, coordinate transformation, nearest mode, cubic
coefficient, antialias, exclude_outside, roi) applied to an identity along one axis. Every mode the runtime
implements is covered without re-deriving its formulas, and nearest-mode ties are broken exactly as they were in
the forward pass. The identity and the lengths are read at run time (``Shape``), so symbolic sizes need nothing
more; where they are static, the runtime folds these small matrices into constants.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from onnx import TensorProto

from ...graph.builder import node_attributes, normalize_axis
from ..context import GradContext, Step
from ..registry import rule


@rule("Resize")
def _resize(g: GradContext, s: Step):
    x, y = s.x[0], s.y[0]
    if s.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise ValueError(f"Resize node {s.name!r}: keep_aspect_ratio_policy "
                         f"{s.attr('keep_aspect_ratio_policy')!r} is not supported; give the output sizes with "
                         "the default policy 'stretch' (or scales) instead")
    rank = g.rank(x)
    axes = [normalize_axis(a, rank) for a in (s.attr("axes", None) or range(rank))]
    scales = _optional_constant(g, s, 2, "scales")
    # Sizes may be computed at run time (exporters write Concat(Shape(x)[:2], [H, W]) for a dynamic batch):
    # only scales must be constants, as they enter the coordinate transformation.
    if scales is None and not s.has_input(3):
        raise ValueError(f"Resize node {s.name!r} has neither scales nor sizes")
    crop = s.attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize"
    roi = g.require_constant(s, 1, "roi") if crop else None
    in_shape, out_shape = g.shape(x) or [None] * rank, g.shape(y) or [None] * rank
    dx = s.dy[0]
    for k, axis in enumerate(axes):
        scale = float(scales[k]) if scales is not None else None
        # ONNX Runtime copies an axis of scale 1 as it is, even where tf_crop_and_resize's roi or
        # tf_half_pixel_for_nn's half-pixel shift would move it: so does its gradient. An axis not known to
        # keep its length gets the runtime's matrix, which is the identity where it does keep it.
        same_length = in_shape[axis] is not None and in_shape[axis] == out_shape[axis]
        if (scale == 1.0) if scales is not None else same_length:
            continue
        window = None if roi is None else (float(roi[k]), float(roi[len(axes) + k]))
        weights = _axis_weights(g, s, axis, scale, window)
        if g.view.elem_type(x) != TensorProto.FLOAT:
            weights = g.op("Cast", weights, to=g.view.elem_type(x))
        dx = _contract(g, dx, weights, axis, rank)
    return s.first(dx)


def _optional_constant(g: GradContext, s: Step, index: int, what: str) -> Optional[np.ndarray]:
    """The value of optional input ``index``, or None where it is absent or empty (the unused one of scales/sizes)."""
    if not s.has_input(index):
        return None
    value = g.require_constant(s, index, what)
    return value if value.size else None


def _axis_weights(g: GradContext, s: Step, axis: int, scale: Optional[float],
                  window: Optional[tuple[float, float]]) -> str:
    """A float32 [length_in, length_out] matrix: the node's Resize of one axis applied to the identity.

    The identity (built at run time, of x's length along ``axis``) lies along the channel axis of a
    [1, length_in, 1, length_in] tensor and only the last axis is resized, so the node's coordinate
    transformation sees exactly the lengths and scale of ``axis``: its scale where given, else y's length.
    """
    length_in = g.op("Shape", s.x[0], start=axis, end=axis + 1)
    square = g.op("ConstantOfShape", g.op("Concat", length_in, length_in, axis=0))
    identity = g.op("Unsqueeze", g.op("EyeLike", square), g.ints([0, 2]))
    roi = g.const([0, 0, 0, window[0], 1, 1, 1, window[1]], np.float32) if window else ""
    scales = g.const([1, 1, 1, scale], np.float32) if scale is not None else ""
    sizes = ("" if scale is not None else
             g.op("Concat", g.ints([1]), length_in, g.ints([1]), g.op("Shape", s.y[0], start=axis, end=axis + 1),
                  axis=0))
    attrs = node_attributes(s.node, drop=("axes", "keep_aspect_ratio_policy", "extrapolation_value"))
    resized = g.op("Resize", identity, roi, scales, sizes, **attrs)  # extrapolated samples get weight 0
    return g.op("Squeeze", resized, g.ints([0, 2]))


def _contract(g: GradContext, grad: str, weights: str, axis: int, rank: int) -> str:
    """``grad`` with ``axis`` mapped back from output to input length: sum_o weights[i, o] grad[.., o, ..]."""
    if axis == rank - 1:
        return g.op("MatMul", grad, g.op("Transpose", weights))
    if axis == rank - 2:
        return g.op("MatMul", weights, grad)
    swap = list(range(rank))
    swap[axis], swap[rank - 2] = rank - 2, axis
    return g.op("Transpose", g.op("MatMul", weights, g.op("Transpose", grad, perm=swap)), perm=swap)
