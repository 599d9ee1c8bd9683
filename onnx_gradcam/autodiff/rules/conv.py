"""Convolutions. The input gradient of a Conv is a ConvTranspose with the same weights, and vice versa.

Sizes are read in the graph (``Shape``), never from shape inference: one gradient model serves every input
size the forward model takes.
"""

from __future__ import annotations

from typing import Optional

from ..context import GradContext, Step
from ..registry import rule


def explicit_pads(s: Step, rank: int) -> Optional[list[int]]:
    """The node's pads as ``[begin..., end...]``; None for ``auto_pad=SAME_*``, whose pads depend on the size."""
    auto_pad = s.attr("auto_pad", "NOTSET")
    if auto_pad.startswith("SAME"):
        return None
    return list(s.attr("pads", [0] * 2 * rank)) if auto_pad == "NOTSET" else [0] * 2 * rank


def transposed_window_grad(g: GradContext, s: Step, dy: str, weight: str, group: int = 1) -> str:
    """The adjoint of window op ``s`` over x = ``s.x[0]`` (a Conv, or a pool's window sum) with weights ``weight``.

    A ConvTranspose with the node's strides and dilations and no pads spreads each window back over padded x;
    its ``output_padding`` of stride - 1 adds zero rows past the last window, as many as any x can have that no
    window reached. x's part is then cut out from the begin pads, at run time. (ConvTranspose's pads and
    ``output_padding`` are fixed attributes, and ONNX Runtime's CUDA kernel rejects asymmetric pads.)
    """
    rank = g.rank(s.x[0]) - 2
    strides = list(s.attr("strides", [1] * rank))
    output_padding = [stride - 1 for stride in strides]
    full = g.op("ConvTranspose", dy, weight, strides=strides, dilations=list(s.attr("dilations", [1] * rank)),
                group=group, output_padding=output_padding)
    size = g.op("Shape", s.x[0], start=2)
    begins = _begin_pads(g, s, size, full, output_padding)
    return g.op("Slice", full, begins, g.op("Add", begins, size), g.ints(range(2, 2 + rank)))


def _begin_pads(g: GradContext, s: Step, size: str, full: str, output_padding: list[int]) -> str:
    """Where index 0 of x lies in ``full`` (int64, one per spatial axis): the node's begin pads.

    ``auto_pad=SAME_*`` pads max(0, F - X) in all, F = s(Y - 1) + (k - 1)d + 1 being the span of the Y windows
    (``full`` less its output padding) and X the size of x; the odd one goes at the end (SAME_UPPER) or the
    beginning (SAME_LOWER).
    """
    rank = len(output_padding)
    pads = explicit_pads(s, rank)
    if pads is not None:
        return g.ints(pads[:rank])
    past_input = g.op("Sub", g.op("Shape", full, start=2), g.op("Add", size, g.ints(output_padding)))
    total = g.op("Max", past_input, g.ints([0]))
    half = g.op("Div", total, g.ints([2]))
    return half if s.attr("auto_pad") == "SAME_UPPER" else g.op("Sub", total, half)


def _only_activations(s: Step) -> None:
    if s.has_input(1) and s.wants[1]:
        raise ValueError(f"{s.node.op_type} node {s.name!r}: its weights depend on the layer; only activations "
                         "can be differentiated")


@rule("Conv")
def _conv(g: GradContext, s: Step):
    _only_activations(s)
    return s.first(transposed_window_grad(g, s, s.dy[0], s.x[1], s.attr("group", 1)))


@rule("ConvTranspose")
def _conv_transpose(g: GradContext, s: Step):
    # y[stride*i + dilation*k - begin] += w * x[i]; the adjoint reads dy at those same places: a Conv with
    # the same weights, strides, dilations and begin pads, its end pad chosen to give x's size back (for any
    # size: output_padding < stride leaves the Conv's floor division the same).
    _only_activations(s)
    if s.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID") or s.attr("output_shape", None) is not None:
        raise ValueError(f"ConvTranspose node {s.name!r}: auto_pad SAME_* and output_shape are not supported; "
                         "export it with explicit pads and output_padding")
    rank = g.rank(s.x[0]) - 2
    pads = explicit_pads(s, rank)
    output_padding = list(s.attr("output_padding", [0] * rank))
    ends = [max(0, end - extra) for end, extra in zip(pads[rank:], output_padding)]
    dx = g.op("Conv", s.dy[0], s.x[1], strides=list(s.attr("strides", [1] * rank)),
              dilations=list(s.attr("dilations", [1] * rank)), group=s.attr("group", 1), pads=pads[:rank] + ends)
    return s.first(dx)
