"""Resize. It is linear in X and separable: along each resized axis, y = sum_i A[i, o] x[i] for a weight matrix A
(input length x output length), so dX applies A's transpose to dY axis by axis.

A is the runtime's own: the forward Resize (same mode, coordinate transformation, nearest mode, cubic
coefficient, antialias, exclude_outside, roi) applied to an identity along one axis. Every mode the runtime
implements is covered without re-deriving its formulas, nearest-mode ties are broken exactly as they were in
the forward pass, and with constant scales or sizes the runtime folds these small matrices into constants.
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
    # Sizes computed at run time (exporters write Concat(Shape(x)[:2], [H, W]) for a dynamic batch) are
    # read from the inferred output shape: each resized axis must have a static length there.
    runtime_sizes = scales is None and s.has_input(3) and g.constant(s.x[3]) is None
    sizes = None if runtime_sizes else _optional_constant(g, s, 3, "sizes")
    if scales is None and sizes is None and not runtime_sizes:
        raise ValueError(f"Resize node {s.name!r}: its scales or sizes must be constants to differentiate "
                         "through it")
    crop = s.attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize"
    roi = g.require_constant(s, 1, "roi") if crop else None
    in_shape, out_shape = g.shape(x), g.shape(y)
    if runtime_sizes and out_shape is None:
        raise ValueError(f"Resize node {s.name!r}: its sizes ({s.x[3]!r}) are computed at run time and its "
                         "output shape is unknown; give the model fixed output sizes")
    dx = s.dy[0]
    for k, axis in enumerate(axes):
        length_in = in_shape[axis]
        length_out = int(sizes[k]) if sizes is not None else out_shape[axis]
        scale = float(scales[k]) if scales is not None else None
        # ONNX Runtime copies an axis of scale 1 as it is, even where tf_crop_and_resize's roi or
        # tf_half_pixel_for_nn's half-pixel shift would move it: so does its gradient.
        if (scale == 1.0) if scales is not None else (length_out == length_in):
            continue
        if not isinstance(length_in, int) or not isinstance(length_out, int):
            raise ValueError(f"Resize node {s.name!r}: axis {axis} is resized, so its input and output lengths "
                             f"must be known (got {length_in} and {length_out}"
                             f"{', the sizes computed at run time' if runtime_sizes else ''}); give the model "
                             "fixed sizes")
        window = None if roi is None else (float(roi[k]), float(roi[len(axes) + k]))
        weights = _axis_weights(g, s, length_in, length_out, scale, window)
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


def _axis_weights(g: GradContext, s: Step, length_in: int, length_out: int, scale: Optional[float],
                  window: Optional[tuple[float, float]]) -> str:
    """A float32 [length_in, length_out] matrix: the node's Resize of one axis applied to the identity.

    The identity lies along the channel axis of a [1, length_in, 1, length_in] tensor and only the last axis
    is resized, so the node's coordinate transformation sees exactly the lengths and scale of ``axis``.
    """
    identity = g.const(np.eye(length_in, dtype=np.float32).reshape(1, length_in, 1, length_in), hint="identity")
    roi = g.const([0, 0, 0, window[0], 1, 1, 1, window[1]], np.float32) if window else ""
    scales = g.const([1, 1, 1, scale], np.float32) if scale is not None else ""
    sizes = g.ints([1, length_in, 1, length_out]) if scale is None else ""
    attrs = node_attributes(s.node, drop=("axes", "keep_aspect_ratio_policy", "extrapolation_value"))
    resized = g.op("Resize", identity, roi, scales, sizes, **attrs)  # extrapolated samples get weight 0
    return g.op("Reshape", resized, g.ints([length_in, length_out]))


def _contract(g: GradContext, grad: str, weights: str, axis: int, rank: int) -> str:
    """``grad`` with ``axis`` mapped back from output to input length: sum_o weights[i, o] grad[.., o, ..]."""
    if axis == rank - 1:
        return g.op("MatMul", grad, g.op("Transpose", weights))
    if axis == rank - 2:
        return g.op("MatMul", weights, grad)
    swap = list(range(rank))
    swap[axis], swap[rank - 2] = rank - 2, axis
    return g.op("Transpose", g.op("MatMul", weights, g.op("Transpose", grad, perm=swap)), perm=swap)
