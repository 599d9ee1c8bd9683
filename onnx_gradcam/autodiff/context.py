"""What a gradient rule works with: the forward node (a :class:`Step`) and a :class:`GradContext` to emit nodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

import numpy as np
from onnx import NodeProto, TensorProto, helper

from ..graph.builder import Attr, NodeBuilder, node_attributes
from ..graph.view import FLOAT_TYPES, Dim, GraphView


@dataclass
class Step:
    """One forward node seen from its gradient rule.

    ``x`` and ``y`` are its input and output names, ``dy`` the gradient of each output (``None`` where
    nothing flows back), ``wants[i]`` whether input ``i`` needs a gradient.
    """

    node: NodeProto
    dy: list[Optional[str]]
    wants: list[bool]

    @property
    def x(self) -> list[str]:
        return list(self.node.input)

    @property
    def y(self) -> list[str]:
        return list(self.node.output)

    @property
    def name(self) -> str:
        return self.node.name

    def attr(self, name: str, default=None):
        value = node_attributes(self.node).get(name, default)
        return value.decode() if isinstance(value, bytes) else value

    def has_input(self, index: int) -> bool:
        return index < len(self.node.input) and bool(self.node.input[index])

    def first(self, dx: Optional[str]) -> list[Optional[str]]:
        """A rule's result where only the first (data) input gets a gradient: ``dx``, then ``None`` per other input."""
        return [dx] + [None] * (len(self.node.input) - 1)


class GradContext:
    """What rules emit with: the shared :class:`NodeBuilder`, plus facts about the forward graph (shapes, types,
    constant values) and the building blocks gradients are made of."""

    def __init__(self, view: GraphView, builder: NodeBuilder):
        self.view = view
        self.builder = builder

    def with_stand_ins(self, stand_ins: dict[str, str]) -> GradContext:
        """This context, where each emitted tensor of ``stand_ins`` stands in for a forward tensor (emitted ->
        forward): a rule asking about it gets the forward tensor's shape and its own element type. So a rule
        can run on a synthetic node of emitted tensors: an op's float twin on integer values."""
        return _StandInContext(self.view, self.builder, stand_ins, {})

    def with_shapes(self, shapes: dict[str, list[Dim]]) -> GradContext:
        """This context, told the shapes of emitted tensors a rule run on a synthetic node asks about (a
        transposed operand, a tensor in a blocked layout), which the forward view cannot know."""
        return _StandInContext(self.view, self.builder, {}, shapes)

    # --- emitting (the builder's) ------------------------------------------------------------------------
    def op(self, op_type: str, *inputs: Optional[str], outputs: int = 1, **attrs: Optional[Attr]
           ) -> Union[str, list[str]]:
        return self.builder.op(op_type, *inputs, outputs=outputs, **attrs)

    def const(self, value, dtype=None, hint: str = "const") -> str:
        return self.builder.const(value, dtype, hint)

    def ints(self, values: Iterable[int]) -> str:
        return self.builder.ints(values)

    def scalar(self, value: float, like: str) -> str:
        return self.builder.scalar(value, like)

    def zeros_like(self, name: str) -> str:
        return self.builder.zeros_like(name)

    # --- facts about forward tensors ---------------------------------------------------------------------
    def shape(self, name: str) -> Optional[list[Dim]]:
        return self.view.shape(name)

    def rank(self, name: str) -> int:
        rank = self.view.rank(name)
        if rank is None:
            raise ValueError(f"the rank of tensor {name!r} is unknown after shape inference")
        return rank

    def static_shape(self, name: str) -> list[int]:
        return self.view.static_shape(name, " to differentiate through it")

    def constant(self, name: str) -> Optional[np.ndarray]:
        return self.view.constant(name)

    def require_constant(self, step: Step, index: int, what: str) -> np.ndarray:
        value = self.view.constant(step.x[index])
        if value is None:
            raise ValueError(
                f"{step.node.op_type} node {step.name!r}: its {what} ({step.x[index]!r}) must be a constant "
                "to differentiate through it"
            )
        return value

    def np_dtype(self, like: str) -> np.dtype:
        elem_type = self.builder.elem_type(like)
        if elem_type is None:
            raise ValueError(f"the element type of tensor {like!r} is unknown")
        return helper.tensor_dtype_to_np_dtype(elem_type)

    # --- small building blocks ---------------------------------------------------------------------------
    def where_else_zero(self, condition: str, value: str, like: str) -> str:
        return self.op("Where", condition, value, self.scalar(0.0, like))

    def scatter_add(self, data: str, indices: str, updates: str, axis: int = 0) -> str:
        """``ScatterElements(reduction="add")``, summed in float32 for float16 and bfloat16 (which ONNX
        Runtime's CPU kernel does not add in; float32 sums are also the more accurate)."""
        elem_type = self.builder.elem_type(data)
        if elem_type in (TensorProto.FLOAT, TensorProto.DOUBLE):
            return self.op("ScatterElements", data, indices, updates, axis=axis, reduction="add")
        summed = self.op("ScatterElements", self.builder.cast(data, TensorProto.FLOAT), indices,
                         self.builder.cast(updates, TensorProto.FLOAT), axis=axis, reduction="add")
        return self.builder.cast(summed, elem_type)

    def mask(self, condition: str, like: str) -> str:
        """``condition`` as 0/1 in ``like``'s float type."""
        return self.op("Cast", condition, to=self.builder.elem_type(like))

    def reshape_like(self, value: str, like: str) -> str:
        return self.op("Reshape", value, self.op("Shape", like))

    def unbroadcast(self, grad: str, target: str, result: str) -> str:
        """Sum ``grad`` (shaped like the broadcast ``result``) down to the shape of the operand ``target``."""
        return self.sum_to(grad, self.shape(result), target)

    def sum_to(self, grad: str, grad_shape: Optional[Sequence[Dim]], target: str,
               target_shape: Optional[Sequence[Dim]] = None) -> str:
        """Sum ``grad`` (of shape ``grad_shape``) over the axes numpy broadcasting added to ``target``'s shape.

        ``target_shape`` overrides the target's inferred shape; the result is reshaped to ``target`` itself.
        """
        if target_shape is None:
            target_shape = self.shape(target)
        if target_shape is None or grad_shape is None:
            return self._unbroadcast_dynamic(grad, target)
        lead = len(grad_shape) - len(target_shape)
        axes = list(range(lead))
        for index, dim in enumerate(target_shape):
            out = grad_shape[lead + index]
            if dim == out and dim is not None:
                continue
            if dim == 1:
                axes.append(lead + index)
            elif isinstance(dim, int) and dim > 1:
                continue
            else:  # unknown or symbolic and different: only the runtime can tell
                return self._unbroadcast_dynamic(grad, target)
        reduced = self.op("ReduceSum", grad, self.ints(axes), keepdims=1) if axes else grad
        reshape = lead or list(target_shape) != list(self.shape(target) or [])
        return self.reshape_like(reduced, target) if reshape else reduced

    def _unbroadcast_dynamic(self, grad: str, target: str) -> str:
        grad_shape = self.op("Shape", grad)
        target_shape = self.op("Shape", target)
        missing = self.op("Sub", self.op("Size", grad_shape), self.op("Size", target_shape))
        ones = self.op("ConstantOfShape", self.op("Reshape", missing, self.ints([1])),
                       value=helper.make_tensor("one", 7, [1], [1]))
        padded = self.op("Concat", ones, target_shape, axis=0)
        axes = self.op("Reshape", self.op("NonZero", self.op("Equal", padded, self.ints([1]))), self.ints([-1]))
        reduced = self.op("ReduceSum", grad, axes, keepdims=1, noop_with_empty_axes=1)
        return self.op("Reshape", reduced, target_shape)


class _StandInContext(GradContext):
    """A :class:`GradContext` over a :class:`_StandInView`, whose errors name the forward tensors."""

    def __init__(self, view: GraphView, builder: NodeBuilder, stand_ins: dict[str, str],
                 shapes: dict[str, list[Dim]]):
        super().__init__(_StandInView(view, builder, stand_ins, shapes), builder)
        self._stand_ins = stand_ins

    def rank(self, name: str) -> int:
        return super().rank(self._stand_ins.get(name, name))


class _StandInView:
    """A :class:`GraphView` that answers for emitted tensors too: a stand-in with the shape of the tensor it
    stands for, a tensor of ``shapes`` with its given shape (their types from the builder, no constant values);
    everything else as the view does."""

    def __init__(self, view: GraphView, builder: NodeBuilder, stand_ins: dict[str, str],
                 shapes: dict[str, list[Dim]]):
        self._view = view
        self._builder = builder
        self._stand_ins = stand_ins
        self._shapes = shapes

    def __getattr__(self, name: str):
        return getattr(self._view, name)

    def shape(self, name: str) -> Optional[list[Dim]]:
        return self._shapes[name] if name in self._shapes else self._view.shape(self._stand_ins.get(name, name))

    def rank(self, name: str) -> Optional[int]:
        shape = self.shape(name)
        return None if shape is None else len(shape)

    def static_shape(self, name: str, what: str = "") -> list[int]:
        return self._view.static_shape(self._stand_ins.get(name, name), what)

    def elem_type(self, name: str) -> Optional[int]:
        emitted = name in self._stand_ins or name in self._shapes
        return self._builder.elem_type(name) if emitted else self._view.elem_type(name)

    def is_float(self, name: str) -> bool:
        return self.elem_type(name) in FLOAT_TYPES

    def constant(self, name: str) -> Optional[np.ndarray]:
        return None if name in self._stand_ins or name in self._shapes else self._view.constant(name)
