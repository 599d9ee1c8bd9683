"""Exporting explainers for deployment: a standalone ONNX model, or a Triton Inference Server model repository."""

from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from .explainer import Explainer
from .graph.layers import TokenGrid
from .graph.model import ModelLike
from .triton import model_config, model_name

Layers = Union[str, Sequence[str]]


def export_explainer(model: ModelLike, path: str, layer: Layers = "auto", method: str = "gradcam",
                     targets: str = "top", output: Union[str, int, None] = None,
                     tokens: Optional[TokenGrid] = None) -> None:
    """Write a standalone explainer model to ``path``: the original inputs (plus an int64 ``target_class``
    (N,) with ``targets="input"``), the original outputs plus ``cam`` (N, H, W) float in [0, 1].

    It runs on a stock ONNX Runtime (CPU or CUDA, any language binding) without this package or a training
    framework. ``layer``, ``method`` (a gradient method), ``output`` and ``tokens`` are as for
    :class:`Explainer`; see :meth:`Explainer.export`.
    """
    _explainer(model, layer, method, output, tokens).export(path, targets)


def export_triton(model: ModelLike, directory: str, name: Optional[str] = None, layer: Layers = "auto",
                  method: str = "gradcam", targets: str = "top", output: Union[str, int, None] = None,
                  tokens: Optional[TokenGrid] = None, max_batch_size: int = 8) -> str:
    """Write a Triton model repository entry ``directory/<name>/1/model.onnx`` plus ``config.pbtxt`` (inputs,
    outputs, ``max_batch_size`` and dynamic batching), so Triton serves explanations with no code of ours.

    ``name`` defaults to the model file's name and the method (``resnet50_gradcam``). Returns the model's folder.
    """
    if name is None:
        stem = os.path.splitext(os.path.basename(model))[0] if isinstance(model, (str, os.PathLike)) else "model"
        name = f"{stem}_{method}"
    name = model_name(name)
    folder = os.path.join(directory, name)
    model_path = os.path.join(folder, "1", "model.onnx")
    explainer = _explainer(model, layer, method, output, tokens)
    config = model_config(explainer.exported_model(targets), name, max_batch_size)  # fails before writing
    os.makedirs(os.path.dirname(model_path), exist_ok=True)
    explainer.export(model_path, targets)
    with open(os.path.join(folder, "config.pbtxt"), "w") as handle:
        handle.write(config)
    return folder


def _explainer(model, layer, method, output, tokens) -> Explainer:
    # Exporting runs no session, so no provider probe is needed.
    return Explainer(model, layer=layer, method=method, output=output, providers=["CPUExecutionProvider"],
                     tokens=tokens)
