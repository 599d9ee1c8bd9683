"""In-graph post-processing of maps: upsampling to the image and per-image min-max normalisation.

It follows pytorch-grad-cam's convention, so maps compare one to one: per layer, min-max (with a 1e-7
guard) at the layer's resolution, bilinear resize; then the mean over layers, min-max again. Normalising
before the resize keeps maps of tiny magnitude (random weights, saturated outputs) from vanishing
under the guard.
"""

from __future__ import annotations

from typing import Sequence

from .autodiff.emit import Emitter

EPSILON = 1e-7


def image_size(e: Emitter, image: str, image_layout: str) -> str:
    """The image's (H, W) as an int64 [2] tensor."""
    start = 2 if image_layout == "NCHW" else 1
    return e.op("Shape", image, start=start, end=start + 2)


def upsample(e: Emitter, raw: str, size: str) -> str:
    """(N, h, w) -> (N, H, W) with ``size`` = (H, W): bilinear with half-pixel centres (as cv2.resize and
    torch's align_corners=False)."""
    as_image = e.op("Unsqueeze", raw, e.ints([1]))
    sizes = e.op("Concat", e.op("Shape", as_image, end=2), size, axis=0)
    resized = e.op("Resize", as_image, "", "", sizes, mode="linear", coordinate_transformation_mode="half_pixel")
    return e.op("Squeeze", resized, e.ints([1]))


def normalize(e: Emitter, maps: str) -> str:
    """Per image: (m - min) / (max - min + 1e-7), so each map spans [0, 1] (all zero stays all zero)."""
    axes = e.ints([1, 2])
    low = e.op("ReduceMin", maps, axes, keepdims=1)
    shifted = e.op("Sub", maps, low)
    high = e.op("ReduceMax", shifted, axes, keepdims=1)
    return e.op("Div", shifted, e.op("Add", high, e.const(EPSILON, "float32")))


def combine(e: Emitter, per_layer: Sequence[str]) -> str:
    """Several layers' upsampled maps into one: their mean, normalised again."""
    if len(per_layer) == 1:
        return normalize(e, per_layer[0])
    stacked = e.op("Concat", *[e.op("Unsqueeze", m, e.ints([0])) for m in per_layer], axis=0)
    return normalize(e, e.op("ReduceMean", stacked, e.ints([0]), keepdims=0))
