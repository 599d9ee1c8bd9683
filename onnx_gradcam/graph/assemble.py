"""Building a new model from an existing one plus added nodes, inputs and outputs."""

from __future__ import annotations

from typing import Sequence

from onnx import AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto, helper

from .model import set_ir_version


def extend_model(model: ModelProto, nodes: Sequence[NodeProto], initializers: Sequence[TensorProto] = (),
                 inputs: Sequence[ValueInfoProto] = (), outputs: Sequence[ValueInfoProto] = (),
                 name: str | None = None) -> ModelProto:
    """A new model: ``model``'s graph with ``nodes`` appended and the given inputs and outputs added."""
    graph = model.graph
    new_graph = helper.make_graph(
        list(graph.node) + list(nodes),
        name or graph.name,
        list(graph.input) + list(inputs),
        list(graph.output) + list(outputs),
        initializer=list(graph.initializer) + list(initializers),
        value_info=list(graph.value_info),
    )
    return _model_like(model, new_graph)


def _model_like(model: ModelProto, graph: GraphProto) -> ModelProto:
    """``graph`` as a model with ``model``'s opsets, IR version and metadata."""
    result = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="onnx-gradcam")
    result.ir_version = model.ir_version
    for prop in model.metadata_props:
        result.metadata_props.add().CopyFrom(prop)
    return set_ir_version(result)


def tensor_info(name: str, elem_type: int, shape) -> ValueInfoProto:
    """A ValueInfo; ``None`` dims become unnamed dynamic dims."""
    return helper.make_tensor_value_info(name, elem_type, None if shape is None else list(shape))


def with_outputs(view, names) -> ModelProto:
    """``view``'s model computing exactly the tensors ``names`` as its outputs (a body for a cut-out head,
    or the model restricted to one output), without the nodes and initializers they do not need."""
    return _restricted(view.model, [tensor_info(name, view.elem_type(name), view.shape(name)) for name in names])


def keep_outputs(model: ModelProto, names: Sequence[str]) -> ModelProto:
    """A copy of ``model`` with only the outputs ``names``, and without the nodes and initializers that no longer
    contribute to them."""
    infos = {info.name: info for info in model.graph.output}
    missing = [name for name in names if name not in infos]
    if missing:
        raise ValueError(f"the model has no outputs {missing}; its outputs are {list(infos)}")
    return _restricted(model, [infos[name] for name in names])


def _restricted(model: ModelProto, outputs: Sequence[ValueInfoProto]) -> ModelProto:
    """``model`` computing ``outputs``, pruned to what they read. The inputs stay: they are the interface."""
    needed, kept = {info.name for info in outputs}, []
    for node in reversed(model.graph.node):
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
            needed.update(_names_read_by_subgraphs(node))
    pruned = helper.make_graph(
        kept[::-1], model.graph.name, list(model.graph.input), list(outputs),
        initializer=[t for t in model.graph.initializer if t.name in needed],
        value_info=[v for v in model.graph.value_info if v.name in needed])
    return _model_like(model, pruned)


def _names_read_by_subgraphs(node: NodeProto) -> set[str]:
    """Every tensor name that the node's subgraphs (If, Loop, Scan bodies) mention: they may read outer tensors."""
    names = set()
    for attribute in node.attribute:
        for graph in [attribute.g] if attribute.type == AttributeProto.GRAPH else list(attribute.graphs):
            for inner in graph.node:
                names.update(inner.input)
                names.update(_names_read_by_subgraphs(inner))
    return names
