"""The arrays a caller hands an Explainer, checked before ONNX Runtime sees them: one line that says what
is wrong and what would be right, instead of ONNX Runtime's message about an input the caller never named."""

from __future__ import annotations

import warnings
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from .graph.layout import image_hw
from .graph.view import Dim, GraphView

Images = Union[np.ndarray, Mapping[str, np.ndarray]]
NONFINITE = ("raise", "warn")
"""What an Explainer does with images holding NaN or inf: refuse the call, or explain the others and mark
those (``Explanation.nonfinite``)."""
OTHER_LAYOUT = {"NCHW": ("NHWC", (0, 3, 1, 2)), "NHWC": ("NCHW", (0, 2, 3, 1))}
"""For a model's layout: the layout a wrong array may be in, and the transpose that turns it into the model's."""


def model_feeds(view: GraphView, images: Images, image_input: Optional[str] = None,
                image_layout: str = "NCHW") -> dict[str, np.ndarray]:
    """The model's inputs by name: ``images`` itself for a one-input model, else the dict given; each checked
    for dtype and shape (and ``image_input``, laid out ``image_layout``, for channels, layout and size)."""
    inputs = view.input_names
    if isinstance(images, Mapping):
        missing = set(inputs) - set(images)
        if missing:
            raise ValueError(f"missing model inputs {sorted(missing)}; the model takes {inputs}")
        feeds = {name: np.asarray(images[name]) for name in inputs}
    elif len(inputs) != 1:
        raise ValueError(f"the model takes several inputs {inputs}: pass a dict of arrays")
    else:
        feeds = {inputs[0]: np.asarray(images)}
    for name, array in feeds.items():
        _check_dtype(view, name, array, "images" if name == image_input else "array")
        _check_shape(name, view.shape(name), array, image_layout if name == image_input else None)
    return feeds


def _check_dtype(view: GraphView, name: str, array: np.ndarray, shown_as: str) -> None:
    """The array's dtype is the input's (ONNX Runtime never casts), with the cast that fixes it (on the array
    ``shown_as``)."""
    elem_type = view.elem_type(name)
    if elem_type is None:
        return
    expected = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))
    if array.dtype == expected:
        return
    fix = f"{shown_as}.astype(np.{expected.name})"
    if expected.kind == "f" and array.dtype == np.uint8:
        fix += " / 255 (pixels 0..255 to 0..1, then the model's own normalisation)"
    raise ValueError(f"input {name!r} takes {expected.name} arrays, got {array.dtype.name}: use {fix}")


def _shown(shape: Sequence[Dim]) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) else str(d or "?") for d in shape) + ")"


def _fits(shape: Sequence[int], expected: Sequence[Dim]) -> bool:
    return len(shape) == len(expected) and all(not isinstance(e, int) or s == e for s, e in zip(shape, expected))


def _check_shape(name: str, expected: Optional[list[Dim]], array: np.ndarray, layout: Optional[str]) -> None:
    """Rank, then (for the image input, laid out ``layout``) channels and layout, then the fixed sizes."""
    if expected is None:
        return
    shown = _shown(expected)
    if array.ndim != len(expected):
        one = ": one image is images[None]" if _fits((1, *array.shape), expected) else ""
        raise ValueError(f"input {name!r} takes rank-{len(expected)} arrays {shown}, got shape {array.shape}{one}")
    if layout is not None:
        _check_channels(name, expected, array.shape, layout)
    wrong = [axis for axis, dim in enumerate(expected) if isinstance(dim, int) and array.shape[axis] != dim]
    if wrong == [0]:
        raise ValueError(f"input {name!r} takes batches of exactly {expected[0]} {shown}, got {array.shape[0]}: "
                         f"give {expected[0]} images per call (max_batch={expected[0]} splits larger batches of "
                         "that many)")
    if wrong and layout is not None and set(wrong) <= {layout.index("H"), layout.index("W")}:
        size, got = ("x".join(str(d) for d in image_hw(dims, layout)) for dims in (expected, array.shape))
        raise ValueError(f"input {name!r} takes {size} images {shown}, got {got} in {array.shape}: resize them to "
                         f"{size} (the model was exported with that size fixed)")
    if wrong:
        raise ValueError(f"input {name!r} takes arrays of shape {shown}, got {array.shape}: the model was exported "
                         "with those sizes fixed, so resize the images to them")


def _check_channels(name: str, expected: list[Dim], shape: tuple, layout: str) -> None:
    """The image's channel count, and the other layout suggested when the array is laid out that way."""
    axis = layout.index("C")
    channels = expected[axis]
    if not isinstance(channels, int) or shape[axis] == channels:
        return
    other, perm = OTHER_LAYOUT[layout]
    if _fits([shape[p] for p in perm], expected):
        raise ValueError(f"input {name!r} is {layout} {_shown(expected)}, got {shape}, which looks like {other}: "
                         f"use images.transpose{perm}")
    fix = _channel_fix(shape[axis], channels, axis)
    raise ValueError(f"input {name!r} takes {channels}-channel {layout} images {_shown(expected)}, got shape "
                     f"{shape} with {shape[axis]} at the channel axis {axis}: {fix}")


def _channel_fix(got: int, wanted: int, axis: int) -> str:
    """The usual fix for a gray image given to an RGB model, or RGBA to RGB; else what to give."""
    if got == 1 and wanted == 3:
        return f"repeat the gray channel, np.repeat(images, 3, axis={axis})"
    if got == 4 and wanted == 3:
        return "drop the alpha channel, " + ("images[:, :3]" if axis == 1 else "images[..., :3]")
    return f"give {wanted} channels"


def nonfinite_rows(images: np.ndarray, name: str, on_nonfinite: str) -> np.ndarray:
    """(N,) bool: which images hold NaN or inf. An error naming them ("raise"), or a warning ("warn")."""
    if images.dtype.kind != "f":
        return np.zeros(len(images), bool)
    rows = ~np.isfinite(images).all(axis=tuple(range(1, images.ndim)))
    if rows.any():
        found = np.flatnonzero(rows).tolist()
        which, verb = (f"image {found[0]}", "holds") if len(found) == 1 else (f"images {found}", "hold")
        counts = f"{int(np.isnan(images).sum())} NaN, {int(np.isinf(images).sum())} inf"
        if on_nonfinite == "raise":
            raise ValueError(f"{which} of {len(images)} in input {name!r} {verb} NaN or inf ({counts}): fix the "
                             "images, or pass Explainer(..., on_nonfinite='warn') to explain the others and mark them")
        warnings.warn(f"{which} of {len(images)} {verb} NaN or inf ({counts}): left unexplained, their maps "
                      "are NaN (result.nonfinite marks them)", RuntimeWarning, stacklevel=3)
    return rows


def with_stand_ins(images: np.ndarray, nonfinite: np.ndarray) -> np.ndarray:
    """``images`` with each ``nonfinite`` row replaced by the first finite image (zeros if none), so the batch
    keeps its size (a fixed-batch model takes no other) and no method meets NaN; those rows' results are
    blanked afterwards (:meth:`~onnx_gradcam.explanation.Explanation.blank`)."""
    if not nonfinite.any():
        return images
    finite = np.flatnonzero(~nonfinite)
    images = images.copy()
    images[nonfinite] = images[finite[0]] if finite.size else 0
    return images
