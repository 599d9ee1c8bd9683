"""Gradient methods, emitted as ONNX nodes inside the explainer model so only maps leave the device.

Each method maps (activations A, gradients dA, layer) to a raw map of shape (N, h, w), ReLU applied.
"""

from __future__ import annotations

from typing import Callable

from ..autodiff.emit import Emitter
from ..graph.layers import Layer

GradientMethod = Callable[[Emitter, str, str, Layer], str]


def _gradcam(e: Emitter, activations: str, gradients: str, layer: Layer) -> str:
    """Grad-CAM (Selvaraju et al. 2017): channel weights are the spatial mean of the gradient."""
    weights = e.op("ReduceMean", gradients, e.ints(layer.spatial_axes), keepdims=1)
    return _weighted_channel_sum(e, activations, weights, layer)


def _weighted_channel_sum(e: Emitter, activations: str, weights: str, layer: Layer) -> str:
    weighted = e.op("Mul", activations, weights)
    return e.op("Relu", e.op("ReduceSum", weighted, e.ints([layer.channel_axis]), keepdims=0))


GRADIENT_METHODS: dict[str, GradientMethod] = {
    "gradcam": _gradcam,
}


def gradient_method(name: str) -> GradientMethod:
    try:
        return GRADIENT_METHODS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(GRADIENT_METHODS))}") from None
