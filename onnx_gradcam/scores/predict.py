"""The model as the faithfulness scores see it: a function from images to class scores, run on ONNX Runtime.

The scores perturb images and ask the model again, many times per image, so the model is wrapped once in a
:data:`Predict` that runs in batches and turns logits into probabilities (the scores' papers all read the class
probability).
"""

from __future__ import annotations

import os
from typing import Callable, Union

import numpy as np

from ..files import output_kind
from ..graph.model import ModelLike, load_model
from ..graph.view import GraphView
from ..runtime import Providers, has_float16_weights, make_session
from ..subject import resolve_output

Predict = Callable[[np.ndarray], np.ndarray]
"""Images (n, ...) in the model's layout -> class scores (n, classes), float."""


def session_predictor(model: ModelLike, output: Union[str, int, None] = None, batch_size: int = 64,
                      probabilities: bool = True, providers: Providers = "auto") -> Predict:
    """A :data:`Predict` over an ONNX model with one image input, run in batches of at most ``batch_size``.

    ``model``: a path, serialized bytes or ``onnx.ModelProto``; ``output``: the output scored (name or index, the
    first by default), which must be (n, classes). With ``probabilities``, the scores are probabilities: softmax
    over logits, exp of log-probabilities, and an output the graph already ends in Softmax or Sigmoid left as it
    is. ``providers``: as for :class:`~onnx_gradcam.Explainer` (``"auto"``: CUDA when it works here, else the CPU).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: run at least 1 image per session run")
    proto = load_model(model)
    view = GraphView(proto)
    if len(view.input_names) != 1:
        raise ValueError(f"the model has inputs {view.input_names}: session_predictor feeds one image input only "
                         "(fix the other inputs in the graph, or write your own Predict function)")
    name = resolve_output(view, output)
    kind = output_kind(view, name)
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else proto
    session = make_session(source, providers, float16_weights=has_float16_weights(proto))
    feed = session.get_inputs()[0]
    dtype = _NUMPY_TYPES.get(feed.type)
    if dtype is None:
        raise ValueError(f"the model's input {feed.name!r} is of type {feed.type}: session_predictor feeds float "
                         f"images ({', '.join(_NUMPY_TYPES)})")

    def predict(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images, dtype=dtype)
        runs = [session.run([name], {feed.name: images[start:start + batch_size]})[0]
                for start in range(0, len(images), batch_size)]
        scores = np.concatenate(runs).astype(np.float64)
        if scores.ndim != 2:
            raise ValueError(f"output {name!r} has shape {scores.shape}: the scores need (n, classes); name "
                             "another output (output=...)")
        return _as_probabilities(scores, kind, name) if probabilities else scores

    return predict


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def _as_probabilities(scores: np.ndarray, kind: str, name: str) -> np.ndarray:
    """Probabilities from what the output holds (:func:`~onnx_gradcam.files.output_kind`)."""
    if kind == "probability":
        return scores
    if kind == "log_probability":
        return np.exp(scores)
    if scores.shape[1] == 1:
        raise ValueError(f"output {name!r} is one logit per image: a softmax over one class is always 1; add the "
                         "model's Sigmoid to the graph, or pass probabilities=False")
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)

