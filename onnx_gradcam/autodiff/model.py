"""A whole gradient model: the forward graph plus d(sum(seed * output))/d(tensor) outputs."""

from __future__ import annotations

from typing import Optional, Sequence

from onnx import ModelProto, helper

from ..graph.assemble import extend_model, tensor_info
from ..graph.model import ModelLike, load_model, normalize
from ..graph.view import GraphView
from .backward import backward

SEED = "seed"


def gradient_output_name(tensor: str) -> str:
    return f"grad/{tensor}"


def gradient_model(model: ModelLike, wrt: Sequence[str], output: Optional[str] = None) -> ModelProto:
    """The model with one more input, ``seed`` (shaped like ``output``), and one more output per tensor in
    ``wrt``, named ``grad/<tensor>``: the gradient of ``sum(seed * output)`` with respect to that tensor.

    ``wrt`` may name graph inputs (input saliency) or any intermediate float tensor.
    """
    view = GraphView(normalize(load_model(model)))
    output = output or view.output_names[0]
    if output not in view.producer and output not in view.input_names:
        raise ValueError(f"no tensor named {output!r} in the model")
    grads = backward(view, output, SEED, wrt)
    renames = [helper.make_node("Identity", [grads.names[t]], [gradient_output_name(t)], name=f"grad_out_{i}")
               for i, t in enumerate(wrt)]
    return extend_model(
        view.model, grads.nodes + renames, grads.initializers,
        inputs=[tensor_info(SEED, view.elem_type(output), view.shape(output))],
        outputs=[tensor_info(gradient_output_name(t), view.elem_type(t), view.shape(t)) for t in wrt],
    )
