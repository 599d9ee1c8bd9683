"""The table of gradient rules: one rule per ONNX op type.

A rule receives the context (to emit nodes) and a :class:`~onnx_gradcam.autodiff.context.Step` (the forward
node, the gradients of its outputs, which inputs need a gradient) and returns exactly one gradient name, or
``None``, per input (``s.first(dx)`` where only the first input gets one). The table itself documents
coverage: :func:`supported_ops` lists it.
"""

from __future__ import annotations

from typing import Callable

RULES: dict[str, Callable] = {}

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


def rule(*op_types: str) -> Callable:
    """Register the decorated function as the gradient rule of ``op_types``."""

    def register(function: Callable) -> Callable:
        for op_type in op_types:
            if op_type in RULES:
                raise ValueError(f"two gradient rules for {op_type}")
            RULES[op_type] = function
        return function

    return register


def supported_ops() -> list[str]:
    """Every op type the gradient module can differentiate through or knows to stop at."""
    from . import rules  # noqa: F401  (importing registers them)

    return sorted(set(RULES) | NON_DIFFERENTIABLE)
