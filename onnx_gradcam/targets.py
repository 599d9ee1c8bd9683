"""Targets: what score is explained, turned into the seed of the backward pass (d score / d output).

Class targets are resolved inside the explainer model (the top class needs the model's own output);
segmentation and detection targets are seed arrays built on the host, one image at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .autodiff.emit import Emitter

TOP_CLASS = -1
"""A class index of -1 asks for the class the model scores highest for that image."""


@dataclass(frozen=True)
class Probability:
    """The softmax probability of ``class_index`` (None: the top class) instead of its logit."""

    class_index: Optional[int] = None


@dataclass(frozen=True)
class Mask:
    """A class of a segmentation output (N, classes, H, W) summed over a region: the seed is one_hot * mask.

    ``mask``: (H, W) weights (bool or float) at the output's resolution; None for the whole image.
    """

    class_index: int
    mask: Optional[np.ndarray] = None

    def seed(self, output_shape: Sequence[int], dtype) -> np.ndarray:
        classes, *spatial = output_shape
        seed = np.zeros(output_shape, dtype)
        mask = np.ones(spatial) if self.mask is None else np.asarray(self.mask)
        if mask.shape != tuple(spatial):
            raise ValueError(f"mask of shape {mask.shape} for an output whose spatial shape is {tuple(spatial)}")
        seed[self.class_index] = mask
        return seed


@dataclass(frozen=True)
class Detection:
    """One detection's class score in a YOLO-style raw output.

    ``layout="boxes_last"``: (N, 4 + classes, anchors) (YOLOv8 style, class rows after 4 box rows);
    ``layout="boxes_first"``: (N, anchors, 5 + classes) (YOLOv5 style: box, objectness, classes).
    """

    class_index: int
    anchor: int
    layout: str = "boxes_last"

    def seed(self, output_shape: Sequence[int], dtype) -> np.ndarray:
        seed = np.zeros(output_shape, dtype)
        if self.layout == "boxes_last":
            seed[4 + self.class_index, self.anchor] = 1
        elif self.layout == "boxes_first":
            seed[self.anchor, 5 + self.class_index] = 1
        else:
            raise ValueError(f"unknown detection layout {self.layout!r}: 'boxes_last' or 'boxes_first'")
        return seed


def class_seed(e: Emitter, output: str, class_input: Optional[str], elem_type: int, probability: bool = False
               ) -> tuple[str, str]:
    """Seeds for a (N, classes) output from int64 class indices (-1: top class; no ``class_input``: always
    the top class).

    The logit's seed is one_hot(c); the softmax probability's is p_c * (one_hot(c) - p), its gradient
    with respect to the logits. Returns (seed, the class indices actually used).
    """
    top = e.op("ArgMax", output, axis=1, keepdims=0)
    chosen = top if class_input is None else e.op("Where", e.op("Less", class_input, e.ints([0])), top, class_input)
    depth = e.op("Shape", output, start=1, end=2)
    one_hot = e.op("Cast", e.op("OneHot", chosen, depth, e.const(np.array([0, 1], dtype=np.int64)), axis=-1),
                   to=elem_type)
    if not probability:
        return one_hot, chosen
    p = e.op("Softmax", output, axis=1)
    p_chosen = e.op("ReduceSum", e.op("Mul", p, one_hot), e.ints([1]), keepdims=1)
    return e.op("Mul", p_chosen, e.op("Sub", one_hot, p)), chosen
