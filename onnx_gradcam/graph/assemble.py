"""Building a new model from an existing one plus added nodes, inputs and outputs."""

from __future__ import annotations

from typing import Sequence

from onnx import ModelProto, NodeProto, TensorProto, ValueInfoProto, helper

from .model import set_ir_version


def extend_model(model: ModelProto, nodes: Sequence[NodeProto], initializers: Sequence[TensorProto] = (),
                 inputs: Sequence[ValueInfoProto] = (), outputs: Sequence[ValueInfoProto] = (),
                 keep_outputs: bool = True, name: str | None = None) -> ModelProto:
    """A new model: ``model``'s graph with ``nodes`` appended and the given inputs and outputs added."""
    graph = model.graph
    new_graph = helper.make_graph(
        list(graph.node) + list(nodes),
        name or graph.name,
        list(graph.input) + list(inputs),
        (list(graph.output) if keep_outputs else []) + list(outputs),
        initializer=list(graph.initializer) + list(initializers),
        value_info=list(graph.value_info),
    )
    extended = helper.make_model(new_graph, opset_imports=list(model.opset_import), producer_name="onnx-gradcam")
    extended.ir_version = model.ir_version
    for prop in model.metadata_props:
        extended.metadata_props.add().CopyFrom(prop)
    return set_ir_version(extended)


def tensor_info(name: str, elem_type: int, shape) -> ValueInfoProto:
    """A ValueInfo; ``None`` dims become unnamed dynamic dims."""
    return helper.make_tensor_value_info(name, elem_type, None if shape is None else list(shape))


def with_outputs(view, names) -> ModelProto:
    """``view``'s model computing exactly the tensors ``names`` as its outputs (a body for a cut-out head,
    or the model restricted to one output)."""
    return extend_model(view.model, [], keep_outputs=False,
                        outputs=[tensor_info(name, view.elem_type(name), view.shape(name)) for name in names])
