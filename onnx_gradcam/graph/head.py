"""Cutting out the head: the part of the graph between the layer(s) and the output, as a model of its own.

The head's inputs are the layer tensors plus every other tensor its nodes read that the head does not
compute itself (a residual branch that starts before the layer, a shape taken from the image), so the head
model reproduces the output exactly when fed those tensors from the full model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

from onnx import ModelProto, NodeProto, helper

from .assemble import tensor_info
from .model import set_ir_version
from .view import GraphView

if TYPE_CHECKING:
    from .layers import Layer


@dataclass
class Head:
    """A head model; ``inputs`` lists the layer tensors first (those not computed from another layer), then the
    other tensors it needs."""

    model: ModelProto
    layers: list[str]
    inputs: list[str]


def head_nodes(view: GraphView, layers: Sequence[str], output: str) -> list[NodeProto]:
    """The nodes on a path from ``layers`` to ``output``, in graph order."""
    needed = view.ancestors([output])
    downstream = view.depends_on(layers)
    return [node for node in view.nodes
            if any(name in needed for name in node.output) and any(name in downstream for name in node.input)]


def cut_head(view: GraphView, layers: Sequence[str], output: str) -> Head:
    """The nodes computing ``output`` from ``layers`` (and what else they read), as a standalone model."""
    nodes = head_nodes(view, layers, output)
    read = {name for node in nodes for name in node.input}
    constant_nodes = [node for node in view.nodes
                      if node.op_type == "Constant" and not node.input and node.output[0] in read]
    nodes = constant_nodes + nodes
    computed = {name for node in nodes for name in node.output}
    fed = [name for name in layers if name not in computed]  # a layer after another is computed from it
    produced = computed | set(layers)
    initializers = {t.name: t for t in view.graph.initializer}
    boundary: list[str] = []
    for node in nodes:
        for name in node.input:
            if name and name not in produced and name not in initializers and name not in boundary:
                boundary.append(name)
    constants = [initializers[n] for node in nodes for n in node.input if n in initializers]
    unique_constants = list({t.name: t for t in constants}.values())
    inputs = fed + boundary
    graph = helper.make_graph(
        nodes, "head",
        [tensor_info(name, view.elem_type(name), view.shape(name)) for name in inputs],
        [tensor_info(output, view.elem_type(output), view.shape(output))],
        initializer=unique_constants,
    )
    model = helper.make_model(graph, opset_imports=list(view.model.opset_import), producer_name="onnx-gradcam")
    return Head(set_ir_version(model), list(layers), inputs)


def cut_head_at(view: GraphView, layers: Sequence[Layer], output: str) -> Head:
    """:func:`cut_head` at the layers' tensors. A layer that is only an NCHW copy beside a blocked network
    (ORT_ENABLE_ALL) starts no head: nothing is computed from it."""
    copies = [layer.display_name for layer in layers if layer.blocked]
    if copies:
        raise ValueError(f"layer(s) {copies} are NCHW copies beside the network, which ONNX Runtime's "
                         "ORT_ENABLE_ALL optimiser runs on blocked tensors: Ablation-CAM and several targets per "
                         "image need a head computed from the layer; use the model optimised at "
                         "ORT_ENABLE_EXTENDED, or a gradient method")
    return cut_head(view, [layer.tensor for layer in layers], output)
