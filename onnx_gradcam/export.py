"""Exporting explainers for deployment: a standalone ONNX model, or a Triton Inference Server model repository."""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from .explainer import Explainer
from .graph.layers import TokenGrid
from .graph.model import ModelLike
from .triton import model_config, model_name
from .writing import atomic

Layers = Union[str, Sequence[str]]


def export_explainer(model: ModelLike, path: str, layer: Layers = "auto", method: str = "gradcam",
                     targets: str = "top", output: Union[str, int, None] = None,
                     tokens: Optional[TokenGrid] = None, precision: str = "float32") -> None:
    """Write a standalone explainer model to ``path``: the original inputs (plus an int64 ``target_class``
    (N,) with ``targets="input"``), the original outputs plus ``cam`` (N, H, W) float in [0, 1].

    It runs on a stock ONNX Runtime (CPU or CUDA, any language binding) without this package or a training
    framework. ``layer``, ``method`` (a gradient method), ``output``, ``tokens`` and ``precision`` are as for
    :class:`Explainer`; see :meth:`Explainer.export`.
    """
    explainer_to_export(model, layer, method, output, tokens, precision).export(path, targets)


def export_triton(model: ModelLike, directory: str, name: Optional[str] = None, layer: Layers = "auto",
                  method: str = "gradcam", targets: str = "top", output: Union[str, int, None] = None,
                  tokens: Optional[TokenGrid] = None, max_batch_size: int = 8, precision: str = "float32") -> str:
    """Write a Triton model repository entry ``directory/<name>/1/model.onnx`` plus ``config.pbtxt`` (inputs,
    outputs, ``max_batch_size`` and dynamic batching), so Triton serves explanations with no code of ours.

    ``name`` defaults to the model file's name and the method (``resnet50_gradcam``). Returns the model's folder.
    """
    explainer = explainer_to_export(model, layer, method, output, tokens, precision)
    return write_triton_entry(explainer, directory, name or default_name(model, method), targets, max_batch_size)


def write_triton_entry(explainer: Explainer, directory: str, name: str, targets: str = "top",
                       max_batch_size: int = 8) -> str:
    """:func:`export_triton` for an explainer already built. Returns the model's folder."""
    name = model_name(name)
    model = explainer.exported_model(targets)
    config = model_config(model, name, max_batch_size)  # fails before anything is written
    folder = os.path.join(directory, name)
    os.makedirs(os.path.join(folder, "1"), exist_ok=True)
    explainer.write(model, os.path.join(folder, "1", "model.onnx"))
    with atomic(os.path.join(folder, "config.pbtxt")) as staged, open(staged, "w") as handle:
        handle.write(config)
    return folder


def default_name(model: ModelLike, method: str) -> str:
    """The model file's name and the method (``resnet50_gradcam``); ``model_<method>`` for in-memory models."""
    stem = os.path.splitext(os.path.basename(model))[0] if isinstance(model, (str, os.PathLike)) else "model"
    return f"{stem}_{method}"


def explainer_to_export(model: ModelLike, layer: Layers = "auto", method: str = "gradcam",
                        output: Union[str, int, None] = None, tokens: Optional[TokenGrid] = None,
                        precision: str = "float32") -> Explainer:
    """An Explainer for exporting only: it runs no session, so no provider probe is made."""
    return Explainer(model, layer=layer, method=method, output=output, providers=["CPUExecutionProvider"],
                     tokens=tokens, precision=precision)
