"""Targets: what score is explained, turned into the seed of the backward pass (d score / d output).

A request (``None``, class indices, :class:`Probability`, :class:`Mask`, :class:`Detection`, a seed array)
becomes a :class:`TargetFeed`: a :class:`Seeding` and the array fed with it.

Class targets are resolved inside the explainer model (the top class needs the model's own output);
segmentation and detection targets are seed arrays built on the host, one image at a time.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from .graph.builder import NodeBuilder

TOP_CLASS = -1
"""A class index of -1 asks for the class the model scores highest for that image."""


class Seeding(enum.Enum):
    """How an explainer model receives its seed (one explainer model is built per seeding)."""

    CLASS = "class"
    """An int64 class per image (-1: the top class); the seed is its one-hot row."""
    PROBABILITY = "probability"
    """As CLASS, but the score is the class's softmax probability."""
    TOP = "top"
    """No input: each image's top class, found in the graph (the exported explainer's default)."""
    SEED = "seed"
    """A float seed array shaped like the output: the score is sum(seed * output)."""


@dataclass(frozen=True)
class Probability:
    """The softmax probability of ``class_index`` (None: the top class) instead of its logit."""

    class_index: Optional[int] = None


@dataclass(frozen=True)
class Mask:
    """A class of a segmentation output (N, classes, H, W) summed over a region: the seed is one_hot * mask.

    ``mask``: (H, W) weights (bool or float) at the output's resolution; None for the whole image (which needs
    the output's size known: for a model of symbolic size, give the mask).
    """

    class_index: int
    mask: Optional[np.ndarray] = None

    def seed(self, output_shape: Sequence, dtype) -> np.ndarray:
        """The seed for one image; ``output_shape`` without the batch, symbolic sizes as None or names."""
        classes, *spatial = output_shape
        if not isinstance(classes, int):
            raise ValueError("Mask targets need the output's number of classes known; pass a seed array instead")
        _check_index("class index", self.class_index, classes)
        known = all(isinstance(d, int) for d in spatial)
        if self.mask is None and not known:
            raise ValueError(f"the output's size is symbolic {tuple(spatial)}: give the Mask a mask at the size "
                             "the output has for these images")
        mask = np.ones(spatial) if self.mask is None else np.asarray(self.mask)
        if len(mask.shape) != len(spatial) or (known and mask.shape != tuple(spatial)):
            raise ValueError(f"mask of shape {mask.shape} for an output whose spatial shape is {tuple(spatial)}")
        seed = np.zeros((classes, *mask.shape), dtype)
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
        if self.layout not in ("boxes_last", "boxes_first"):
            raise ValueError(f"unknown detection layout {self.layout!r}: 'boxes_last' or 'boxes_first'")
        rows, columns = output_shape if self.layout == "boxes_last" else output_shape[::-1]
        first_class = 4 if self.layout == "boxes_last" else 5
        _check_index("class index", self.class_index, rows - first_class)
        _check_index("anchor", self.anchor, columns)
        seed = np.zeros(output_shape, dtype)
        position = (first_class + self.class_index, self.anchor)
        seed[position if self.layout == "boxes_last" else position[::-1]] = 1
        return seed


def _check_index(what: str, index: int, count: int) -> None:
    if not 0 <= index < count:
        raise ValueError(f"{what} {index} is out of range: the output has {count} ({0}..{count - 1})")


@dataclass(frozen=True)
class TargetFeed:
    """A target request in the form an explainer model takes: how it is seeded, and the array fed for it
    (int64 classes (N,) for CLASS and PROBABILITY, a float seed shaped like the output for SEED)."""

    seeding: Seeding
    values: np.ndarray


Targets = Union[None, int, Probability, Mask, Detection, Sequence, np.ndarray]
"""What a caller may ask to explain; see :meth:`onnx_gradcam.Explainer.__call__`."""


def several_per_image(targets: Targets) -> bool:
    """A list of target lists: several maps per image."""
    return isinstance(targets, (list, tuple)) and len(targets) > 0 and all(
        isinstance(t, (list, tuple, np.ndarray)) for t in targets)


def target_feed(targets: Targets, batch: int, output_shape: Optional[Sequence], output_dtype: np.dtype
                ) -> TargetFeed:
    """The feed for ``targets`` over ``batch`` images; ``output_shape`` and ``output_dtype`` describe the
    explained output (Mask and Detection seeds are built in its shape)."""
    if hasattr(targets, "__array__") and not isinstance(targets, np.ndarray):  # a torch or JAX array
        targets = np.asarray(targets)
    if isinstance(targets, np.ndarray) and targets.dtype.kind == "f":
        return TargetFeed(Seeding.SEED, _seed(targets, batch, output_shape, output_dtype))
    listed = list(targets) if isinstance(targets, (list, tuple)) else [targets]
    if listed and all(isinstance(t, (Mask, Detection)) for t in listed):
        return TargetFeed(Seeding.SEED, _host_seeds(listed, batch, output_shape, output_dtype))
    probability = bool(listed) and all(isinstance(t, Probability) for t in listed)
    if targets is None:
        classes = np.full(batch, TOP_CLASS, dtype=np.int64)
    elif isinstance(targets, np.ndarray):
        classes = _class_array(targets)
    else:
        classes = np.asarray([_class_index(t) for t in listed], dtype=np.int64).reshape(-1)
    if classes.size == 1:
        classes = np.repeat(classes, batch)
    if classes.size != batch:
        raise ValueError(f"{classes.size} targets for {batch} images: give one class per image or one class for all")
    _check_classes(classes, output_shape)
    return TargetFeed(Seeding.PROBABILITY if probability else Seeding.CLASS, classes)


CLASS_TARGETS = ("give a class index (int; -1: the top class), one per image, None (each image's top class), "
                 "Probability, Mask or Detection targets, or a float seed array shaped like the output")


def _class_index(target) -> int:
    """One class request as an int (-1: the top class); never a float rounded or a string parsed."""
    value = target.class_index if isinstance(target, Probability) else target
    if isinstance(target, Probability) and value is None:
        return TOP_CLASS
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"target {value!r} ({type(value).__name__}) is not a class index: {CLASS_TARGETS}")
    return int(value)


def _class_array(targets: np.ndarray) -> np.ndarray:
    """An integer array of class indices as int64 (a float array is a seed, anything else an error)."""
    if targets.dtype.kind not in "iu":
        raise ValueError(f"targets of dtype {targets.dtype.name} are not class indices: {CLASS_TARGETS}")
    return targets.astype(np.int64).reshape(-1)


def _seed(seed: np.ndarray, batch: int, output_shape: Optional[Sequence], dtype: np.dtype) -> np.ndarray:
    """A float seed array, checked against the batch and the output's shape, in the output's float type."""
    if output_shape is not None:
        expected = [batch, *output_shape[1:]]
        if len(seed.shape) != len(expected) or any(isinstance(e, int) and s != e
                                                   for s, e in zip(seed.shape, expected)):
            shown = ", ".join(str(d) if isinstance(d, int) else "?" for d in expected)
            raise ValueError(f"a target seed of shape {seed.shape} for {batch} images: the seed is shaped like the "
                             f"explained output, ({shown})")
    if not np.isfinite(seed).all():
        raise ValueError("the target seed holds NaN or inf: every value of the seed weights the output")
    return seed.astype(dtype, copy=False)


def _check_classes(classes: np.ndarray, output_shape: Optional[Sequence]) -> None:
    """Class indices within the output's classes, or -1 (never quietly clamped or wrapped by ONNX Runtime)."""
    count = output_shape[1] if output_shape is not None and len(output_shape) == 2 else None
    known = isinstance(count, int)
    bad = classes[(classes < TOP_CLASS) | ((classes >= count) if known else False)]
    if bad.size:
        valid = f"0..{count - 1}" if known else "0 or more"
        raise ValueError(f"class index {int(bad[0])} is out of range: the output has "
                         f"{count if known else 'an unknown number of'} classes ({valid}); -1 asks for each "
                         "image's top class")


def _host_seeds(targets: list, batch: int, output_shape: Optional[Sequence], dtype: np.dtype) -> np.ndarray:
    """One seed per image from Mask / Detection targets (one target for all images, or one each)."""
    if len(targets) == 1:
        targets = targets * batch
    if len(targets) != batch:
        raise ValueError(f"{len(targets)} targets for {batch} images")
    if output_shape is None:
        raise ValueError("the explained output's shape is unknown: pass a seed array instead")
    if any(isinstance(t, Detection) for t in targets) and not all(isinstance(d, int) for d in output_shape[1:]):
        raise ValueError(f"the explained output has shape {output_shape}: Detection targets need its non-batch "
                         "dims known; pass a seed array instead")
    return np.stack([target.seed(output_shape[1:], dtype) for target in targets])


def class_seed(b: NodeBuilder, output: str, class_input: Optional[str], probability: bool = False,
               ranked: Optional[str] = None) -> tuple[str, str]:
    """Seeds for a (N, classes) output from int64 class indices (-1: top class; no ``class_input``: always
    the top class). ``ranked``: the tensor whose top class is taken, ``output`` by default (the model's own
    output where ``output`` is its float32 twin).

    The logit's seed is one_hot(c); the softmax probability's is p_c * (one_hot(c) - p), its gradient
    with respect to the logits. Returns (seed, the class indices actually used).
    """
    top = b.op("ArgMax", ranked or output, axis=1, keepdims=0)
    chosen = top if class_input is None else b.op("Where", b.op("Less", class_input, b.ints([0])), top, class_input)
    depth = b.op("Shape", output, start=1, end=2)
    one_hot = b.op("CastLike", b.op("OneHot", chosen, depth, b.ints([0, 1]), axis=-1), output)
    if not probability:
        return one_hot, chosen
    p = b.op("Softmax", output, axis=1)
    p_chosen = b.op("ReduceSum", b.op("Mul", p, one_hot), b.ints([1]), keepdims=1)
    return b.op("Mul", p_chosen, b.op("Sub", one_hot, p)), chosen
