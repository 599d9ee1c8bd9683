"""The table of gradient rules: one rule per ONNX op type.

A rule receives the context (to emit nodes) and a :class:`~onnx_gradcam.autodiff.context.Step` (the forward
node, the gradients of its outputs, which inputs need a gradient) and returns exactly one gradient name, or
``None``, per input (``s.first(dx)`` where only the first input gets one). The table itself documents
coverage: :func:`supported_ops` lists it.

Rules are keyed by :func:`op_key`: the op type in the default domain, ``domain.OpType`` in any other
(``com.microsoft.QLinearAdd``).
"""

from __future__ import annotations

from typing import Callable

from onnx import NodeProto

RULES: dict[str, Callable] = {}

QUANTIZED: set[str] = set()
"""Quantised ops (QuantizeLinear, QLinearConv, ConvInteger, ...): their rules read integer tensors as they are,
with their scales, and only their first output carries a gradient. Any other op met on integer values is
differentiated as its float twin (see :mod:`~onnx_gradcam.autodiff.backward`)."""

NON_DIFFERENTIABLE = frozenset({
    # Integer, boolean or shape results: nothing flows back through them.
    "Shape", "Size", "ConstantOfShape", "Range", "EyeLike", "NonZero", "ArgMax", "ArgMin", "OneHot",
    "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor",
    "IsNaN", "IsInf", "BitShift",
    # Piecewise constant: the derivative is zero almost everywhere, as in torch.
    "Floor", "Ceil", "Round", "Sign",
    # Random values do not depend on their input's values.
    "RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial",
})
"""Ops that stop the gradient: their outputs never carry one back to their inputs."""

NON_DIFFERENTIABLE_OUTPUTS = {"MaxPool": (1,), "Dropout": (1,)}
"""Outputs that are positions or masks, not values (MaxPool's Indices, Dropout's mask): they stop the gradient
as ``NON_DIFFERENTIABLE`` ops do."""

DEFAULT_DOMAINS = ("", "ai.onnx")


def op_key(op_type: str, domain: str = "") -> str:
    """The key of an op in the tables: its type in the default domain, ``domain.OpType`` in any other."""
    return op_type if domain in DEFAULT_DOMAINS else f"{domain}.{op_type}"


def node_key(node: NodeProto) -> str:
    return op_key(node.op_type, node.domain)


def rule(*op_types: str, domain: str = "", quantized: bool = False) -> Callable:
    """Register the decorated function as the gradient rule of ``op_types`` in ``domain``; ``quantized`` lists
    them in ``QUANTIZED``."""

    def register(function: Callable) -> Callable:
        for op_type in op_types:
            key = op_key(op_type, domain)
            if key in RULES:
                raise ValueError(f"two gradient rules for {key}")
            RULES[key] = function
            if quantized:
                QUANTIZED.add(key)
        return function

    return register


def supported_ops() -> list[str]:
    """Every op type the gradient module can differentiate through or knows to stop at."""
    from . import rules  # noqa: F401  (importing registers them)

    return sorted(set(RULES) | NON_DIFFERENTIABLE)
