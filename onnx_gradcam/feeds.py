"""The arrays a caller hands an Explainer, checked before ONNX Runtime sees them: one line that says what
is wrong and what would be right, instead of ONNX Runtime's message about an input the caller never named."""

from __future__ import annotations

from typing import Mapping, Union

import numpy as np

from .graph.view import GraphView

Images = Union[np.ndarray, Mapping[str, np.ndarray]]


def model_feeds(view: GraphView, images: Images) -> dict[str, np.ndarray]:
    """The model's inputs by name: ``images`` itself for a one-input model, else the dict given."""
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
        _check_shape(view, name, array)
    return feeds


def _check_shape(view: GraphView, name: str, array: np.ndarray) -> None:
    expected = view.shape(name)
    if expected is None:
        return
    shown = "(" + ", ".join(str(d) if d is not None else "?" for d in expected) + ")"
    if array.ndim != len(expected):
        raise ValueError(f"input {name!r} takes rank-{len(expected)} arrays {shown}, got shape {array.shape}")
    wrong = [axis for axis, dim in enumerate(expected) if isinstance(dim, int) and array.shape[axis] != dim]
    if wrong == [0]:
        raise ValueError(f"input {name!r} takes batches of exactly {expected[0]} {shown}, got {array.shape[0]}: "
                         f"give {expected[0]} images per call (max_batch={expected[0]} splits larger batches of "
                         "that many)")
    if wrong:
        raise ValueError(f"input {name!r} takes arrays of shape {shown}, got {array.shape}: the model was exported "
                         "with those sizes fixed, so resize the images to them")
