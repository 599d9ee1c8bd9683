"""One node builder for every piece of graph this package adds to a model: seeds, the backward pass, maps.

Names. Every tensor and node the builder makes up is ``NAMESPACE`` + a hint + a counter, checked against
every name of the model and every name handed out before, so no made-up name can shadow another. Names
the explainer model shows to its user (``grad/<layer>``, ``cam``, ``target_class``) are *claimed*: the name
asked for where it is free, else that name with a numeric suffix. Made-up names never start like a
claimed one, so the two cannot meet either.

Types. The builder knows the element type of the model's tensors (from the view it is given) and of most
tensors it emits (from the small table below), so a scalar is made in the type of the tensor it meets:
float16, float32 and float64 graphs alike. Where a type is not known, the scalar is a float64 constant
cast like its partner at run time (``CastLike``), which rounds correctly into any float type.
"""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

NAMESPACE = "onnx_gradcam/"
"""The prefix of every name the builder makes up."""

Attr = Union[int, float, str, Sequence[int], Sequence[float], TensorProto]
ElemTypes = Callable[[str], Optional[int]]

_BOOL_RESULTS = frozenset({"Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor",
                           "IsNaN", "IsInf"})
_INT64_RESULTS = frozenset({"Shape", "Size", "ArgMax", "ArgMin", "NonZero"})
_TYPE_FROM_INPUT = {"Where": 1, "CastLike": 1, "OneHot": 2, "DequantizeLinear": 1}
"""Ops whose result takes the type of an input other than the first (every other op emitted takes the first's)."""


class NodeBuilder:
    """Collects the nodes and initializers added to one model.

    ``taken``: every name the model already uses (tensors and nodes). ``elem_types``: the element type of a
    model tensor by name (None where unknown).
    """

    def __init__(self, taken: Iterable[str], elem_types: ElemTypes = lambda name: None):
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._taken = set(taken)
        self._model_types = elem_types
        self._types: dict[str, int] = {}
        self._counter = 0
        self._constants: dict[tuple, str] = {}

    # --- names -------------------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A new made-up name."""
        while True:
            self._counter += 1
            name = f"{NAMESPACE}{hint}_{self._counter}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def claim(self, name: str) -> str:
        """``name`` for a tensor the user sees, or ``name_<k>`` where the model already has ``name``."""
        candidate, k = name, 0
        while candidate in self._taken or candidate.startswith(NAMESPACE):
            k += 1
            candidate = f"{name}_{k}"
        self._taken.add(candidate)
        return candidate

    # --- nodes and constants -----------------------------------------------------------------------------
    def op(self, op_type: str, *inputs: Optional[str], outputs: int = 1, **attrs: Optional[Attr]
           ) -> Union[str, list[str]]:
        """Append one node (attributes given as None are left out); return its output name, or names."""
        hint = op_type.lower()
        names = [self.fresh(hint) for _ in range(outputs)]
        attributes = {key: value for key, value in attrs.items() if value is not None}
        self.nodes.append(helper.make_node(op_type, [i or "" for i in inputs], names, name=self.fresh(f"node_{hint}"),
                                           **attributes))
        result_type = self._result_type(op_type, inputs, attributes)
        if result_type is not None:
            self._types[names[0]] = result_type
        return names[0] if outputs == 1 else names

    def rename(self, source: str, name: str) -> str:
        """Give tensor ``source`` the claimed name ``name`` (an Identity), for an output of the model."""
        self.nodes.append(helper.make_node("Identity", [source], [name], name=self.fresh("node_output")))
        if self.elem_type(source) is not None:
            self._types[name] = self.elem_type(source)
        return name

    def const(self, value, dtype: Union[np.dtype, type, str, None] = None, hint: str = "const") -> str:
        """An initializer holding ``value``; equal constants are shared."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            name = self.fresh(hint)
            tensor = numpy_helper.from_array(array, name)
            self.initializers.append(tensor)
            self._constants[key] = name
            self._types[name] = tensor.data_type
        return self._constants[key]

    def ints(self, values: Iterable[int]) -> str:
        """A 1-D int64 constant, the form ONNX takes axes, shapes, starts and pads in."""
        return self.const(np.asarray(list(values), dtype=np.int64), hint="ints")

    def scalar(self, value: float, like: str) -> str:
        """A scalar ``value`` in the element type of tensor ``like``."""
        elem_type = self.elem_type(like)
        if elem_type is not None:
            return self.const(value, helper.tensor_dtype_to_np_dtype(elem_type), hint="scalar")
        return self.op("CastLike", self.const(value, np.float64, hint="scalar"), like)

    def cast(self, name: str, elem_type: int) -> str:
        """``name`` in ``elem_type``: itself where it has that type already."""
        return name if self.elem_type(name) == elem_type else self.op("Cast", name, to=elem_type)

    def zeros_like(self, name: str) -> str:
        """Zeros shaped and typed like ``name``, whatever ``name`` holds (no ``name * 0``: that is NaN at inf)."""
        return self.op("Expand", self.scalar(0.0, name), self.op("Shape", name))

    # --- types -------------------------------------------------------------------------------------------
    def elem_type(self, name: str) -> Optional[int]:
        """The element type of a model tensor or of a tensor emitted here; None where unknown."""
        return self._types.get(name) or self._model_types(name)

    def _result_type(self, op_type: str, inputs: Sequence[Optional[str]], attributes: dict) -> Optional[int]:
        if op_type in _BOOL_RESULTS:
            return TensorProto.BOOL
        if op_type in _INT64_RESULTS:
            return TensorProto.INT64
        if op_type == "Cast":
            return attributes["to"]
        if op_type == "ConstantOfShape":
            value = attributes.get("value")
            return value.data_type if value is not None else TensorProto.FLOAT
        source = inputs[_TYPE_FROM_INPUT.get(op_type, 0)] if inputs else None
        return self.elem_type(source) if source else None


def node_attributes(node: NodeProto, drop: Iterable[str] = ()) -> dict:
    """A node's attributes as keyword arguments for :meth:`NodeBuilder.op`, without those named in ``drop``."""
    dropped = set(drop)
    return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in dropped}


def normalize_axis(axis: int, rank: int) -> int:
    """A possibly negative axis as the non-negative axis it means in a rank-``rank`` tensor."""
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for a tensor of rank {rank}")
    return axis + rank if axis < 0 else axis
