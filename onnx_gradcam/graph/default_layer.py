"""Which layer ``layer="auto"`` means.

- **Classifiers** (the explained output has no spatial extent, (N, classes)): the last candidate before the
  output, where the spatial dims are about to be pooled or flattened away. pytorch-grad-cam's examples
  use the same tensor, the last conv block's output.
- **Dense prediction** (segmentation, detection, text detection: the output keeps spatial or anchor axes):
  the last candidate at the lowest resolution that every part of the output depends on, leaving out the
  output and every tensor the output only re-arranges (resized, reshaped, transposed, concatenated,
  squashed by a sigmoid or softmax, scaled by a constant). That is the deepest feature map before the
  decoder upsamples. For an FCN or DeepLab it is the features the per-pixel classifier reads; for a DB text
  detector, the deepest level of its feature pyramid; for a multi-level detector (YOLOX, PicoDet), the
  coarsest features before the neck upsamples them for the finer levels: the coarsest level's own head
  branch reaches only that level's anchors, and a target on any other anchor would get an all-zero map
  there. The last candidate itself would be the output, or a map the output copies, whose Grad-CAM is the
  target mask again.

Resolutions are compared on the inferred shapes. Where the image size is symbolic they are inferred once
more on a copy of the model whose image inputs take a probe size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import onnx
from onnx import shape_inference

from .view import GraphView

if TYPE_CHECKING:
    from .layers import Layer

REARRANGING = frozenset({
    "Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Split", "Slice", "Gather",
    "Resize", "Upsample", "Softmax", "LogSoftmax", "Sigmoid", "Cast", "Expand", "Tile", "DepthToSpace",
    "SpaceToDepth",
})
"""Ops whose result is their input moved, copied, resized or squashed position by position."""
SCALING = frozenset({"Mul", "Div", "Add", "Sub"})
"""Ops that only re-arrange when their other operand is a constant (a detection head's decoding)."""
PROBE_SIZE = 256
"""The image size symbolic spatial dims are given to compare resolutions (a multiple of 32, as most
detectors and segmenters take)."""


def default_layer(view: GraphView, candidates: Sequence[Layer], output: str) -> Layer:
    """The layer ``layer="auto"`` names; see the module's docstring for the rule and why."""
    if not candidates:
        raise no_candidates(output)
    if (view.rank(output) or 2) <= 2:
        return candidates[-1]
    rearranged = _rearranged_into(view, output)
    features = [layer for layer in candidates if layer.tensor not in rearranged] or list(candidates)
    features = _reaching_every_part(view, features, rearranged) or features
    sizes = _spatial_sizes(view, features)
    known = [layer for layer in features if sizes.get(layer.tensor) is not None]
    if not known:
        return features[-1]
    lowest = min(sizes[layer.tensor] for layer in known)
    return [layer for layer in known if sizes[layer.tensor] == lowest][-1]


def no_candidates(output: str) -> ValueError:
    return ValueError(f"no tensor of rank 4 with a spatial extent lies on the path to output {output!r}; name a "
                      "layer explicitly (for token activations of shape (N, tokens, C), give a reshape spec)")


def _rearranged_into(view: GraphView, output: str) -> set[str]:
    """``output`` and every tensor that reaches it through re-arranging ops only."""
    found = {output}
    for node in reversed(view.nodes):
        if not found.intersection(node.output):
            continue
        if node.op_type in REARRANGING:
            found.update(name for name in node.input[:1 if node.op_type != "Concat" else None] if name)
        elif node.op_type in SCALING:
            found.update(name for name in node.input if name and not view.is_constant(name))
    return found


def _reaching_every_part(view: GraphView, layers: Sequence[Layer], rearranged: set[str]) -> list[Layer]:
    """The layers every part of the output is computed from: each tensor the re-arranging tail starts from
    (a detector's per-level head convolutions) depends on them."""
    starts = {name for name in rearranged
              if name in view.producer and view.producer[name].op_type not in REARRANGING | SCALING}
    return [layer for layer in layers if starts <= view.depends_on([layer.tensor])]


def _spatial_sizes(view: GraphView, layers: Sequence[Layer]) -> dict[str, Optional[int]]:
    """Positions (h * w) of each layer's map, from the inferred shapes or, where those are symbolic, from a
    probe at ``PROBE_SIZE``."""
    sizes = {layer.tensor: _area(layer.shape, layer.spatial_axes) for layer in layers}
    if all(size is not None for size in sizes.values()):
        return sizes
    probed = _probe_shapes(view.model)
    return {layer.tensor: _area(probed.get(layer.tensor), layer.spatial_axes) if sizes[layer.tensor] is None
            else sizes[layer.tensor] for layer in layers}


def _area(shape, axes) -> Optional[int]:
    if shape is None or len(shape) <= max(axes):
        return None
    h, w = (shape[axis] for axis in axes)
    return h * w if isinstance(h, int) and isinstance(w, int) else None


def _probe_shapes(model: onnx.ModelProto) -> dict[str, list]:
    """Shapes inferred with every symbolic non-batch dim of the rank-4 inputs set to ``PROBE_SIZE``."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.value_info[:]
    for graph_input in probe.graph.input:
        dims = graph_input.type.tensor_type.shape.dim
        if len(dims) == 4:
            for dim in dims[1:]:
                if not dim.HasField("dim_value"):
                    dim.dim_value = PROBE_SIZE
    try:
        inferred = shape_inference.infer_shapes(probe, data_prop=True)
    except Exception:  # noqa: BLE001  (no probe: resolutions stay unknown, graph order decides)
        return {}
    shapes = {}
    for info in (*inferred.graph.value_info, *inferred.graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes
