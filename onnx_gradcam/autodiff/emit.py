"""Emitting new ONNX nodes and constants with names that cannot clash with the host graph."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

Attr = Union[int, float, str, Sequence[int], Sequence[float], TensorProto]


class Emitter:
    """Collects the nodes and initializers one piece of graph construction adds.

    Every name it hands out starts with ``prefix`` and is checked against ``taken``, so emitted
    tensors never shadow a tensor of the model they are added to.
    """

    def __init__(self, prefix: str, taken: set[str]):
        self.prefix = prefix
        self.taken = taken
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._counter = 0
        self._constants: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        while True:
            self._counter += 1
            name = f"{self.prefix}{hint}_{self._counter}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def op(self, op_type: str, *inputs: Optional[str], outputs: int = 1, name: Optional[str] = None,
           **attrs: Attr) -> Union[str, list[str]]:
        """Append one node; return its output name (or names, when ``outputs`` > 1)."""
        hint = op_type.lower()
        out_names = [self.fresh(hint) for _ in range(outputs)]
        if name is not None:
            out_names[0] = name
            self.taken.add(name)
        attributes = {key: value for key, value in attrs.items() if value is not None}
        node = helper.make_node(op_type, [i or "" for i in inputs], out_names,
                                name=self.fresh(f"node_{hint}"), **attributes)
        self.nodes.append(node)
        return out_names[0] if outputs == 1 else out_names

    def const(self, value, dtype: Union[np.dtype, type, None] = None, hint: str = "const") -> str:
        """An initializer holding ``value``; equal constants are shared."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            name = self.fresh(hint)
            self.initializers.append(numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 constant, the form ONNX wants for axes, shapes, starts and pads."""
        return self.const(np.asarray(list(values), dtype=np.int64), hint="ints")
