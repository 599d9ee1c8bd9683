"""The head recomputed in float32 beside a float16 or bfloat16 model's own nodes, so that the backward pass
built over this twin accumulates in float32 (``precision="float32"``).

The twin reads the model's tensors where the head begins (the layers, a skip path from before them, the
weights), each low-precision one cast up once, and recomputes every node from the layers to the output with
float16 and bfloat16 replaced by float32 (``Cast`` targets, ``ConstantOfShape`` values, ``dtype``
attributes). The model's own nodes and outputs are untouched: what the model outputs is still its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from onnx import AttributeProto, NodeProto, TensorProto, numpy_helper

from .assemble import extend_model, tensor_info
from .builder import NodeBuilder
from .head import head_nodes
from .view import GraphView

LOW_PRECISION = frozenset({TensorProto.FLOAT16, TensorProto.BFLOAT16})
_TYPE_ATTRIBUTES = ("to", "dtype")
"""Attributes that name the element type a node makes."""


@dataclass
class Twin:
    """The model plus the float32 twin of its head; ``twin[name]`` is a head tensor's twin (the tensor itself
    where it has none)."""

    view: GraphView
    names: dict[str, str]

    def __getitem__(self, name: str) -> str:
        return self.names.get(name, name)


def float32_twin(view: GraphView, layers: Sequence[str], output: str) -> Twin:
    """The float32 twin of the head from ``layers`` to ``output``: the model itself (no twin) where the head
    holds no float16 or bfloat16 tensor."""
    nodes = head_nodes(view, layers, output)
    touched = {*layers, *(name for node in nodes for name in (*node.input, *node.output) if name)}
    if not any(view.elem_type(name) in LOW_PRECISION for name in touched):
        return Twin(view, {})
    b = view.builder()
    twins: dict[str, str] = {}
    infos = []

    def twin_of(name: str) -> str:
        """The float32 form of a tensor the head reads: a twin node's output, or the model's tensor cast up."""
        if name and name not in twins:
            twins[name] = b.cast(name, TensorProto.FLOAT) if view.elem_type(name) in LOW_PRECISION else name
            if twins[name] != name:
                infos.append(tensor_info(twins[name], TensorProto.FLOAT, view.shape(name)))
        return twins.get(name, name)

    for node in nodes:
        twin = _float32_node(node, [twin_of(name) for name in node.input], b)
        for name, twin_name in zip(node.output, twin.output):
            if name:
                twins[name] = twin_name
                elem_type = view.elem_type(name)
                if elem_type is not None:
                    infos.append(tensor_info(twin_name, _promoted(elem_type), view.shape(name)))
    for layer in layers:
        twin_of(layer)
    model = extend_model(view.model, b.nodes, b.initializers)
    model.graph.value_info.extend(infos)
    return Twin(GraphView(model), twins)


def _float32_node(node: NodeProto, inputs: Sequence[str], b: NodeBuilder) -> NodeProto:
    """A copy of ``node`` reading ``inputs``, with fresh outputs and float32 wherever it names a low type."""
    twin = NodeProto()
    twin.CopyFrom(node)
    twin.name = b.claim(f"{node.name}/float32")
    del twin.input[:]
    twin.input.extend(inputs)
    del twin.output[:]
    twin.output.extend(b.fresh("float32") if name else "" for name in node.output)
    for attribute in twin.attribute:
        if attribute.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
            raise ValueError(f"precision='float32' cannot recompute node {node.name!r} ({node.op_type}) in "
                             "float32: it holds a subgraph; use precision='model'")
        if attribute.name in _TYPE_ATTRIBUTES and attribute.type == AttributeProto.INT:
            attribute.i = _promoted(attribute.i)
        elif attribute.type == AttributeProto.TENSOR and attribute.t.data_type in LOW_PRECISION:
            value = numpy_helper.to_array(attribute.t).astype(np.float32)
            attribute.t.CopyFrom(numpy_helper.from_array(value, attribute.t.name))
    b.nodes.append(twin)
    return twin


def _promoted(elem_type: int) -> int:
    return TensorProto.FLOAT if elem_type in LOW_PRECISION else elem_type
