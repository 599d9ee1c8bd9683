"""Which axis of each rank-4 tensor holds channels: layouts followed from the image input through the graph.

ONNX ops with channel semantics (Conv, pooling, normalisation) produce NCHW by definition; a Transpose
permutes the layout it receives; shape-preserving ops (elementwise, Resize, Pad, Concat, ...) keep it, and
so does a MatMul over a channels-last tensor's channels. Tensors whose layout does not follow (after a
Reshape, say) are left out of the map and read as NCHW.
That tells NHWC activations (tf2onnx graphs, ConvNeXt's permuted blocks) from NCHW ones without metadata.
"""

from __future__ import annotations

from typing import Optional

from .view import GraphView

NCHWC = "com.microsoft.nchwc"
"""The domain of ONNX Runtime's blocked-layout ops (ORT_ENABLE_ALL: Conv, pools, ReorderInput/Output)."""
CHANNELS_FIRST_OPS = frozenset({
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
    "GlobalLpPool", "BatchNormalization", "InstanceNormalization", "GroupNormalization", "LRN",
    "DepthToSpace", "SpaceToDepth", "MaxUnpool",
})
"""Ops whose rank-4 output is NCHW whatever their input's layout (the ONNX spec defines them so)."""


def image_hw(shape, layout: str) -> list:
    """The (H, W) entries of a rank-4 image shape laid out ``layout`` ("NCHW" or "NHWC")."""
    return list(shape[2:4] if layout == "NCHW" else shape[1:3])


def guess_input_layout(shape) -> str:
    """NHWC when the last dim looks like 1, 3 or 4 channels and the second does not; NCHW otherwise."""
    return "NHWC" if len(shape) == 4 and shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4) else "NCHW"


def infer_layouts(view: GraphView, input_layouts: dict[str, str]) -> dict[str, str]:
    """Tensor name -> a permutation of "NCHW" (e.g. "NHWC") for every rank-4 tensor whose layout follows."""
    layouts = {name: layout for name, layout in input_layouts.items() if view.rank(name) == 4}
    for node in view.nodes:
        for output in node.output:
            if output and view.rank(output) == 4:
                layout = _output_layout(view, node, output, layouts)
                if layout is not None:
                    layouts[output] = layout
    return layouts


def _output_layout(view: GraphView, node, output: str, layouts: dict[str, str]) -> Optional[str]:
    if node.op_type in CHANNELS_FIRST_OPS:
        return "NCHW"
    source = next((name for name in node.input if name in layouts), None)
    if source is None:
        return None
    if node.op_type == "Transpose":
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [3, 2, 1, 0])
        return "".join(layouts[source][axis] for axis in perm)
    if view.shape(output) == view.shape(source) or node.op_type in ("Resize", "Upsample", "Pad", "Slice",
                                                                      "Concat", "Split", "Tile", "Expand"):
        return layouts[source]
    if node.op_type == "MatMul" and layouts[source].endswith("C"):
        return layouts[source]  # a linear layer over channels-last activations: new channels, same layout
    return None
