"""In-graph post-processing of maps: upsampling to the image and per-image min-max normalisation.

It follows pytorch-grad-cam's convention, so maps compare one to one: per layer, min-max (with a 1e-7
guard) at the layer's resolution, bilinear resize; then the mean over layers, min-max again. Normalising
before the resize keeps maps of tiny magnitude (random weights, saturated outputs) from vanishing
under the guard. Every constant takes the type of the map it meets.

Raw maps are computed in float32, or float64 for float64 layers (:func:`map_type`); each is normalised in
that type, then upsampled and combined in float32 (``CAM_TYPE``): ONNX Runtime's CPU Resize has no float64
kernel, and a map in [0, 1] loses nothing that matters in float32.
"""

from __future__ import annotations

from typing import Sequence

from onnx import TensorProto

from .graph.builder import NodeBuilder

EPSILON = 1e-7
CAM_TYPE = TensorProto.FLOAT


def map_type(layer_type: int) -> int:
    """The element type maps are computed in: the layer's, but at least float32 (a float16 sum over a
    layer's channels and positions overflows and loses the map's small values)."""
    return layer_type if layer_type == TensorProto.DOUBLE else TensorProto.FLOAT


def image_size(b: NodeBuilder, image: str, image_layout: str) -> str:
    """The image's (H, W) as an int64 [2] tensor."""
    start = 2 if image_layout == "NCHW" else 1
    return b.op("Shape", image, start=start, end=start + 2)


def upsample(b: NodeBuilder, raw: str, size: str) -> str:
    """(N, h, w) -> (N, H, W) with ``size`` = (H, W): bilinear with half-pixel centres (as cv2.resize and
    torch's align_corners=False)."""
    as_image = b.op("Unsqueeze", raw, b.ints([1]))
    sizes = b.op("Concat", b.op("Shape", as_image, end=2), size, axis=0)
    resized = b.op("Resize", as_image, "", "", sizes, mode="linear", coordinate_transformation_mode="half_pixel")
    return b.op("Squeeze", resized, b.ints([1]))


def min_max(b: NodeBuilder, maps: str) -> str:
    """Per image: (m - min) / (max - min + 1e-7), so each map spans [0, 1] (all zero stays all zero)."""
    axes = b.ints([1, 2])
    low = b.op("ReduceMin", maps, axes, keepdims=1)
    shifted = b.op("Sub", maps, low)
    high = b.op("ReduceMax", shifted, axes, keepdims=1)
    return b.op("Div", shifted, b.op("Add", high, b.scalar(EPSILON, high)))


def combine(b: NodeBuilder, per_layer: Sequence[str]) -> str:
    """Several layers' upsampled maps into one: their mean, normalised again."""
    if len(per_layer) == 1:
        return min_max(b, per_layer[0])
    total = b.op("Sum", *per_layer)  # not a stacked copy of every layer's map: "all" can be a hundred layers
    return min_max(b, b.op("Div", total, b.scalar(float(len(per_layer)), total)))


def finish(b: NodeBuilder, raws: Sequence[str], size: str) -> tuple[str, list[str]]:
    """Raw maps of one or more layers -> (the final (N, H, W) float32 map, each layer's own final map): each
    normalised and upsampled, then combined. A layer's own map is what a call at that layer alone gives; with
    one layer it is the final map itself."""
    upsampled = [upsample(b, b.cast(min_max(b, raw), CAM_TYPE), size) for raw in raws]
    if len(upsampled) == 1:
        cam = combine(b, upsampled)
        return cam, [cam]
    return combine(b, upsampled), [min_max(b, m) for m in upsampled]
