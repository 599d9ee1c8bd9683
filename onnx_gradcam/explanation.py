"""What an Explainer returns, and how results of a batch explained in chunks are put back together."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .graph.layers import Layer


@dataclass
class Explanation:
    """What one call of an :class:`Explainer` returns.

    ``cams``: (N, H, W) float32 maps in [0, 1] at the input's resolution; ``raw``: per layer (keyed by the
    name the user gave, "auto" by the layer's own name), the (N, h, w) maps at the layer's resolution before
    upsampling and normalisation; ``outputs``:
    the model's own outputs by name; ``classes``: the class explained for each image (None for seed targets).
    ``layer_cams``: per layer (keyed as ``raw``), the layer's own (N, H, W) map: what a call at that layer
    alone returns as ``cams`` (``cams`` itself is their mean, normalised again).
    ``nonfinite``: (N,) bool, the images holding NaN or inf that ``on_nonfinite="warn"`` let through unexplained:
    their rows of ``cams``, ``raw`` and float outputs are NaN, their ``classes`` -1.
    """

    cams: np.ndarray
    raw: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    classes: Optional[np.ndarray]
    layers: list[Layer] = field(default_factory=list)
    layer_cams: dict[str, np.ndarray] = field(default_factory=dict)
    nonfinite: Optional[np.ndarray] = None

    def blank(self, nonfinite: np.ndarray) -> "Explanation":
        """Marks the ``nonfinite`` images (N,) bool and sets their rows to NaN (-1 in signed integer arrays):
        they were explained from stand-ins, so nothing in their rows may be read as theirs."""
        for values in (self.cams, *self.raw.values(), *self.layer_cams.values(), *self.outputs.values(),
                       self.classes):
            if isinstance(values, np.ndarray) and values.dtype.kind in "fci":
                values[nonfinite] = np.nan if values.dtype.kind in "fc" else -1
        self.nonfinite = nonfinite
        return self


@dataclass
class LayerGradients:
    """A layer's activations and d(target)/d(activations), both in the layer's own layout."""

    activations: np.ndarray
    gradients: np.ndarray


OUT_OF_MEMORY = ("failed to allocate", "bad_alloc", "bad allocation", "is smaller than requested bytes")
"""What ONNX Runtime's allocation failures say (CUDA, the C++ runtime, the BFC arena at its memory limit)."""


def out_of_memory(error: Exception) -> bool:
    text = str(error).lower()
    return any(phrase in text for phrase in OUT_OF_MEMORY)


def rows(feeds: dict, start: int, stop: int) -> dict:
    return {name: value[start:stop] for name, value in feeds.items()}


def target_rows(targets, start: int, stop: int, batch: int):
    """The targets of images ``start:stop``: per-image targets are sliced, one target for all is kept."""
    if isinstance(targets, np.ndarray) and targets.ndim > 0 and len(targets) == batch:
        return targets[start:stop]
    if isinstance(targets, (list, tuple)) and len(targets) == batch:
        return list(targets[start:stop])
    return targets


def join(parts: list) -> Explanation:
    def cat(values):
        return None if values[0] is None else np.concatenate(values)

    first = parts[0]
    return Explanation(cams=cat([p.cams for p in parts]),
                       raw={key: cat([p.raw[key] for p in parts]) for key in first.raw},
                       outputs={key: cat([p.outputs[key] for p in parts]) for key in first.outputs},
                       classes=cat([p.classes for p in parts]), layers=first.layers,
                       layer_cams={key: cat([p.layer_cams[key] for p in parts]) for key in first.layer_cams})


def join_gradients(parts: list[dict[str, LayerGradients]]) -> dict[str, LayerGradients]:
    return {key: LayerGradients(np.concatenate([p[key].activations for p in parts]),
                                np.concatenate([p[key].gradients for p in parts])) for key in parts[0]}
