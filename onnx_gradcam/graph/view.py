"""A read-only index over a normalized model: who produces and consumes each tensor, its type, shape and value."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Optional, Union

import numpy as np
import onnx
from onnx import ModelProto, NodeProto, TensorProto, numpy_helper

from .builder import NodeBuilder

Dim = Union[int, str, None]
"""A dimension: a known size, a symbolic name, or unknown."""

FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
)


class GraphView:
    """Index over ``model.graph``. Built once per normalized model; it never changes the model."""

    def __init__(self, model: ModelProto):
        self.model = model
        self.graph = model.graph
        self.nodes: list[NodeProto] = list(model.graph.node)
        self.producer: dict[str, NodeProto] = {}
        self.consumers: dict[str, list[NodeProto]] = defaultdict(list)
        self.position: dict[str, int] = {}
        for index, node in enumerate(self.nodes):
            self.position[node.name] = index
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self._types: dict[str, onnx.TypeProto] = {}
        for info in (*model.graph.input, *model.graph.value_info, *model.graph.output):
            self._types[info.name] = info.type
        self._constants: dict[str, TensorProto] = {t.name: t for t in model.graph.initializer}
        for node in self.nodes:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                tensor = _constant_node_tensor(node)
                if tensor is not None:
                    self._constants[node.output[0]] = tensor
        for tensor in model.graph.initializer:
            self._types.setdefault(tensor.name, onnx.helper.make_tensor_type_proto(tensor.data_type, tensor.dims))
        for name, tensor in self._constants.items():
            self._types.setdefault(name, onnx.helper.make_tensor_type_proto(tensor.data_type, tensor.dims))

    # --- names -------------------------------------------------------------------------------------------
    @property
    def input_names(self) -> list[str]:
        initializers = {t.name for t in self.graph.initializer}
        return [i.name for i in self.graph.input if i.name not in initializers]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.graph.output]

    def all_names(self) -> set[str]:
        """Every tensor and node name the graph uses (inputs, outputs, value infos, weights, nodes)."""
        infos = (*self.graph.input, *self.graph.output, *self.graph.value_info)
        return (set(self.producer) | set(self._constants) | {info.name for info in infos}
                | {node.name for node in self.nodes} | {name for node in self.nodes for name in node.input})

    def builder(self) -> NodeBuilder:
        """A :class:`NodeBuilder` for nodes added to this model: its names are taken, its types known."""
        return NodeBuilder(self.all_names(), self.elem_type)

    # --- types and shapes --------------------------------------------------------------------------------
    def elem_type(self, name: str) -> Optional[int]:
        type_proto = self._types.get(name)
        if type_proto is None or not type_proto.HasField("tensor_type"):
            return None
        return type_proto.tensor_type.elem_type or None

    def is_float(self, name: str) -> bool:
        return self.elem_type(name) in FLOAT_TYPES

    def shape(self, name: str) -> Optional[list[Dim]]:
        """The inferred shape, or ``None`` where not even the rank is known. A negative size (some exporters
        write -1 for a dynamic dim) is unknown."""
        type_proto = self._types.get(name)
        if type_proto is None or not type_proto.tensor_type.HasField("shape"):
            return None
        dims: list[Dim] = []
        for dim in type_proto.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value >= 0:
                dims.append(dim.dim_value)
            elif dim.HasField("dim_param"):
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        return dims

    def rank(self, name: str) -> Optional[int]:
        shape = self.shape(name)
        return None if shape is None else len(shape)

    def static_shape(self, name: str, what: str = "") -> list[int]:
        """The shape with every dimension known; a clear error otherwise."""
        shape = self.shape(name)
        if shape is None or not all(isinstance(d, int) for d in shape):
            raise ValueError(
                f"tensor {name!r} needs a fully known shape{what}, but shape inference gave {shape}; "
                "give the model fixed input sizes (e.g. with onnx.tools.update_model_dims)"
            )
        return list(shape)  # type: ignore[arg-type]

    # --- values ------------------------------------------------------------------------------------------
    def constant(self, name: str) -> Optional[np.ndarray]:
        """The value of an initializer or ``Constant`` output, else ``None`` (also for data held elsewhere:
        large weights, which no rule reads)."""
        tensor = self._constants.get(name)
        if tensor is None or tensor.data_location == TensorProto.EXTERNAL:
            return None
        return numpy_helper.to_array(tensor)

    def is_constant(self, name: str) -> bool:
        """An initializer or ``Constant`` output (also where its data is held elsewhere)."""
        return name in self._constants

    # --- structure ---------------------------------------------------------------------------------------
    def depends_on(self, sources: Iterable[str]) -> set[str]:
        """Every tensor computed (in part) from ``sources``, the sources included."""
        reached = set(sources)
        for node in self.nodes:
            if any(name in reached for name in node.input if name):
                reached.update(name for name in node.output if name)
        return reached

    def ancestors(self, targets: Iterable[str]) -> set[str]:
        """Every tensor ``targets`` are computed from, the targets included."""
        needed = set(targets)
        for node in reversed(self.nodes):
            if any(name in needed for name in node.output):
                needed.update(name for name in node.input if name)
        return needed


def _constant_node_tensor(node: NodeProto) -> Optional[TensorProto]:
    for attribute in node.attribute:
        if attribute.name == "value":
            return attribute.t
        if attribute.name in ("value_float", "value_floats", "value_int", "value_ints"):
            value = onnx.helper.get_attribute_value(attribute)
            dtype = np.float32 if "float" in attribute.name else np.int64
            return numpy_helper.from_array(np.array(value, dtype=dtype))
    return None
