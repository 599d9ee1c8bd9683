"""A whole gradient model: the forward graph plus d(sum(seed * output))/d(tensor) outputs."""

from __future__ import annotations

from typing import Optional, Sequence

from onnx import ModelProto

from ..graph.assemble import extend_model, tensor_info
from ..graph.model import ModelLike, load_model, normalize
from ..graph.view import GraphView
from .backward import backward

SEED = "seed"


def gradient_output_name(tensor: str) -> str:
    return f"grad/{tensor}"


def gradient_model(model: ModelLike, wrt: Sequence[str], output: Optional[str] = None) -> ModelProto:
    """The model with one more input, the seed (shaped like ``output``), and one more output per tensor in
    ``wrt``: the gradient of ``sum(seed * output)`` with respect to that tensor.

    ``wrt`` may name graph inputs (input saliency) or any intermediate float tensor. The seed is the last
    input and the gradients are the last outputs, in the order of ``wrt``. They are named ``seed`` and
    ``grad/<tensor>`` where the model leaves those names free, else with a numeric suffix (``seed_1``);
    :func:`gradient_names` reads them back.
    """
    view = GraphView(normalize(load_model(model)))
    output = output or view.output_names[0]
    if output not in view.producer and output not in view.input_names:
        raise ValueError(f"no tensor named {output!r} in the model")
    builder = view.builder()
    seed = builder.claim(SEED)
    grads = backward(view, output, seed, wrt, builder)
    names = [builder.rename(grads[t], builder.claim(gradient_output_name(t))) for t in wrt]
    return extend_model(
        view.model, builder.nodes, builder.initializers,
        inputs=[tensor_info(seed, view.elem_type(output), view.shape(output))],
        outputs=[tensor_info(name, view.elem_type(t), view.shape(t)) for name, t in zip(names, wrt)],
    )


def gradient_names(gradients: ModelProto, wrt: Sequence[str]) -> tuple[str, dict[str, str]]:
    """The seed input of a model :func:`gradient_model` made for ``wrt``, and the output holding each gradient."""
    outputs = [info.name for info in gradients.graph.output]
    return gradients.graph.input[-1].name, dict(zip(wrt, outputs[len(outputs) - len(wrt):]))
