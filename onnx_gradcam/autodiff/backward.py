"""Reverse-mode differentiation of part of an ONNX graph, emitted as ordinary ONNX nodes.

The quantity differentiated is ``sum(seed * output)``; the seed is any tensor name (usually a graph
input), so the caller decides what the target is. Only activations are differentiated, never weights.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

from onnx import NodeProto

from ..graph.builder import NodeBuilder
from ..graph.view import GraphView
from . import rules  # noqa: F401  (importing registers the rules)
from .context import GradContext, Step
from .registry import NON_DIFFERENTIABLE, RULES


class UnsupportedOperatorError(ValueError):
    """The head contains an op the gradient module has no rule for."""

    def __init__(self, node: NodeProto, later_layers: Sequence[str]):
        self.op_type = node.op_type
        self.node_name = node.name
        hint = (f" Choose a layer after it, e.g. {', '.join(repr(n) for n in later_layers[:5])}."
                if later_layers else " Choose a layer after it.")
        domain = f" (domain {node.domain!r})" if node.domain not in ("", "ai.onnx") else ""
        super().__init__(
            f"the gradient module has no rule for op {node.op_type!r}{domain} at node {node.name!r}, which lies "
            f"between the layer and the output.{hint}"
        )


def backward(view: GraphView, output: str, seed: str, wrt: Sequence[str], builder: NodeBuilder,
             suggest: Optional[Callable[[NodeProto], Sequence[str]]] = None) -> dict[str, str]:
    """Emit d sum(seed * output) / d t into ``builder`` for every tensor t in ``wrt``; return t -> its gradient.

    A tensor ``output`` does not depend on gets zeros of its shape and type. ``suggest(node)`` names layers
    after ``node``, for the error raised when that node has no rule.
    """
    ctx = GradContext(view, builder)
    differentiable = _differentiable_tensors(view, wrt)
    needed = view.ancestors([output])
    pending: dict[str, list[str]] = {output: [seed]}

    for node in reversed(view.nodes):
        if not any(name in differentiable and name in needed for name in node.output):
            continue
        wants = [bool(name) and name in differentiable for name in node.input]
        if not any(wants):  # e.g. the node producing a layer: nothing upstream needs a gradient
            continue
        dy = [_total(ctx, pending, name) for name in node.output]
        if all(g is None for g in dy):
            continue
        rule = RULES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if rule is None:
            raise UnsupportedOperatorError(node, suggest(node) if suggest else [])
        dx = _one_per_input(rule, node, rule(ctx, Step(node, dy, wants)))
        for name, grad, want in zip(node.input, dx, wants):
            if want and grad is not None:
                pending.setdefault(name, []).append(grad)

    return {name: _total(ctx, pending, name) or ctx.zeros_like(name) for name in wrt}


def _one_per_input(rule: Callable, node: NodeProto, dx) -> Sequence[Optional[str]]:
    """``dx`` if it holds one entry per input of ``node``: a rule giving more or fewer has a bug, named here,
    which zip would otherwise hide by dropping or misplacing gradients."""
    count = len(dx) if isinstance(dx, (list, tuple)) else None
    if count != len(node.input):
        got = f"{count} gradients" if count is not None else f"a {type(dx).__name__}"
        raise RuntimeError(
            f"gradient rule {rule.__module__}.{rule.__qualname__} returned {got} for {node.op_type} node "
            f"{node.name!r}, which has {len(node.input)} inputs: a rule gives one gradient (or None) per input"
        )
    return dx


def _differentiable_tensors(view: GraphView, wrt: Sequence[str]) -> set[str]:
    """Float tensors computed from ``wrt`` through ops that let a gradient through."""
    reached = set(wrt)
    for node in view.nodes:
        if node.op_type in NON_DIFFERENTIABLE and node.domain in ("", "ai.onnx"):
            continue
        if any(name in reached for name in node.input if name):
            reached.update(name for name in node.output if name and view.is_float(name))
    return reached


def _total(ctx: GradContext, pending: dict[str, list[str]], name: str) -> Optional[str]:
    """The accumulated gradient of ``name``: fan-out contributions are summed once, then cached."""
    grads = pending.get(name)
    if not grads:
        return None
    if len(grads) > 1:
        pending[name] = grads = [ctx.op("Sum", *grads)]
    return grads[0]
