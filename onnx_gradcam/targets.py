"""Targets: what score is explained, turned into the seed of the backward pass (d score / d output)."""

from __future__ import annotations

import numpy as np

from .autodiff.emit import Emitter

TOP_CLASS = -1
"""A class index of -1 asks for the class the model scores highest for that image."""


def class_seed(e: Emitter, output: str, class_input: str, elem_type: int) -> tuple[str, str]:
    """One-hot seeds for a (N, classes) output from int64 class indices (-1: top class).

    Returns (seed, the class indices actually used).
    """
    top = e.op("ArgMax", output, axis=1, keepdims=0)
    chosen = e.op("Where", e.op("Less", class_input, e.ints([0])), top, class_input)
    depth = e.op("Shape", output, start=1, end=2)
    one_hot = e.op("OneHot", chosen, depth, e.const(np.array([0, 1], dtype=np.int64)), axis=-1)
    return e.op("Cast", one_hot, to=elem_type), chosen
