"""Convolutions. The input gradient of a Conv is a ConvTranspose with the same weights, and vice versa."""

from __future__ import annotations

from typing import Sequence

from ..context import GradContext, Step
from ..registry import rule


def explicit_pads(s: Step, spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                  dilations: Sequence[int]) -> list[int]:
    """The node's padding as ``[begin..., end...]``, with ``auto_pad`` resolved as the ONNX spec does."""
    auto_pad = s.attr("auto_pad", "NOTSET")
    rank = len(kernel)
    if auto_pad == "NOTSET":
        return list(s.attr("pads", [0] * 2 * rank))
    if auto_pad == "VALID":
        return [0] * 2 * rank
    begins, ends = [], []
    for size, k, stride, dilation in zip(spatial, kernel, strides, dilations):
        out = -(-size // stride)
        total = max(0, (out - 1) * stride + (k - 1) * dilation + 1 - size)
        small, large = total // 2, total - total // 2
        begins.append(small if auto_pad == "SAME_UPPER" else large)
        ends.append(large if auto_pad == "SAME_UPPER" else small)
    return begins + ends


def spatial_shape(g: GradContext, s: Step, name: str) -> list[int]:
    """The spatial dims of ``name`` (after batch and channels); they must be known, the batch need not be."""
    shape = g.shape(name)
    if shape is None or not all(isinstance(d, int) for d in shape[2:]):
        raise ValueError(f"{s.node.op_type} node {s.name!r}: the spatial dims of {name!r} must be known to "
                         f"differentiate through it, but shape inference gave {shape}; give the model fixed "
                         "image sizes (e.g. with onnx.tools.update_model_dims)")
    return list(shape[2:])


def window_attrs(g: GradContext, s: Step, kernel: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
    """(strides, dilations, pads) of a windowed op over input ``s.x[0]``, defaults filled in."""
    rank = len(kernel)
    strides = list(s.attr("strides", [1] * rank))
    dilations = list(s.attr("dilations", [1] * rank))
    spatial = spatial_shape(g, s, s.x[0])
    return strides, dilations, explicit_pads(s, spatial, kernel, strides, dilations)


def transposed_window_grad(g: GradContext, dy: str, weight: str, in_spatial: Sequence[int],
                           out_spatial: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                           dilations: Sequence[int], pads: Sequence[int], group: int = 1) -> str:
    """The adjoint of a strided, dilated, padded window op with weights ``weight``, as a ConvTranspose.

    ``output_padding`` restores the trailing input rows no window reached. ConvTranspose gets symmetric
    pads only (ONNX Runtime's CUDA kernel rejects others); any asymmetry is cropped with a Slice.
    """
    rank = len(kernel)
    begins, ends = pads[:rank], pads[rank:]
    output_padding, symmetric = [], []
    for size, out, k, stride, dilation, begin, end in zip(in_spatial, out_spatial, kernel, strides, dilations,
                                                          begins, ends):
        reached = stride * (out - 1) + (k - 1) * dilation + 1
        output_padding.append(size + begin + end - reached)
        symmetric.append(min(begin, end))
    dx = g.op("ConvTranspose", dy, weight, strides=list(strides), dilations=list(dilations), group=group,
              pads=symmetric * 2, output_padding=output_padding)
    if list(begins) == list(ends):
        return dx
    starts = [begin - p for begin, p in zip(begins, symmetric)]
    stops = [start + size for start, size in zip(starts, in_spatial)]
    return g.op("Slice", dx, g.ints(starts), g.ints(stops), g.ints(range(2, 2 + rank)))


@rule("Conv")
def _conv(g: GradContext, s: Step):
    if s.has_input(1) and s.wants[1]:
        raise ValueError(f"Conv node {s.name!r}: its weights depend on the layer; only activations can be "
                         "differentiated")
    x, weight = s.x[0], s.x[1]
    kernel = list(s.attr("kernel_shape", None) or g.static_shape(weight)[2:])
    strides, dilations, pads = window_attrs(g, s, kernel)
    dx = transposed_window_grad(g, s.dy[0], weight, spatial_shape(g, s, x), spatial_shape(g, s, s.y[0]), kernel,
                                strides, dilations, pads, s.attr("group", 1))
    return s.first(dx)


@rule("ConvTranspose")
def _conv_transpose(g: GradContext, s: Step):
    # y[stride*i + dilation*k - begin] += w * x[i]; the adjoint reads dy at those same places: a Conv with
    # the same weights, strides, dilations and begin pads, its end pad chosen to give x's size back.
    if s.has_input(1) and s.wants[1]:
        raise ValueError(f"ConvTranspose node {s.name!r}: its weights depend on the layer; only activations can "
                         "be differentiated")
    if s.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or s.attr("output_shape", None) is not None:
        raise ValueError(f"ConvTranspose node {s.name!r}: auto_pad SAME_* and output_shape are not supported; "
                         "export it with explicit pads and output_padding")
    weight = s.x[1]
    kernel = list(s.attr("kernel_shape", None) or g.static_shape(weight)[2:])
    rank = len(kernel)
    pads = list(s.attr("pads", [0] * 2 * rank)) if s.attr("auto_pad", "NOTSET") == "NOTSET" else [0] * 2 * rank
    output_padding = list(s.attr("output_padding", [0] * rank))
    ends = [max(0, end - extra) for end, extra in zip(pads[rank:], output_padding)]
    dx = g.op("Conv", s.dy[0], weight, strides=list(s.attr("strides", [1] * rank)),
              dilations=list(s.attr("dilations", [1] * rank)), group=s.attr("group", 1), pads=pads[:rank] + ends)
    return s.first(dx)
