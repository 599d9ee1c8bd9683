"""Reverse-mode differentiation of part of an ONNX graph, emitted as ordinary ONNX nodes.

The quantity differentiated is ``sum(seed * output)``; the seed is any tensor name (usually a graph
input), so the caller decides what the target is. Only activations are differentiated, never weights.

Integer tensors. A quantised path (QuantizeLinear -> DequantizeLinear, QLinearConv, ConvInteger, ...) carries
the gradient of its integer *values*, in a float type: the quantised ops' rules (``registry.QUANTIZED``) read
their integer inputs with their scales, and any other op met on integer values (a Reshape or MaxPool of int8
activations, a Cast of int32 to float) is differentiated as its float twin: the same node on its integer
tensors cast to float. Where a float path turns integer through an op no rule crosses (a Cast to int32), a
gradient would stop there and be zero in silence: the driver raises instead, naming the op. An integer tensor
that only feeds shapes or indices (a Cast to int64 into a Reshape's shape) gets no gradient from its
consumers' rules; its zero gradient is then the right one, as in torch, and nothing is raised, whatever float
paths run beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from onnx import NodeProto, TensorProto, helper

from ..graph.builder import NodeBuilder
from ..graph.view import GraphView
from . import rules  # noqa: F401  (importing registers the rules)
from .context import GradContext, Step
from .registry import DEFAULT_DOMAINS, NON_DIFFERENTIABLE, NON_DIFFERENTIABLE_OUTPUTS, QUANTIZED, RULES, node_key

QDQ_EXPORT = ("export the model in QDQ form instead (onnxruntime.quantization.quantize_static(..., "
              "quant_format=QuantFormat.QDQ)), whose QuantizeLinear -> DequantizeLinear pairs are differentiated "
              "with the straight-through estimator")


class UnsupportedOperatorError(ValueError):
    """The head contains an op the gradient module cannot differentiate through: no rule for it, or a float
    path it turns integer (``problem`` then says which)."""

    def __init__(self, node: NodeProto, later_layers: Sequence[str], problem: Optional[str] = None,
                 quantized: bool = False):
        self.op_type = node.op_type
        self.node_name = node.name
        domain = f" (domain {node.domain!r})" if node.domain not in DEFAULT_DOMAINS else ""
        problem = problem or (f"the gradient module has no rule for op {node.op_type!r}{domain} at node "
                              f"{node.name!r}, which lies between the layer and the output.")
        hint = (f" Choose a layer after it, e.g. {', '.join(repr(n) for n in later_layers[:5])}"
                if later_layers else " Choose a layer after it")
        super().__init__(f"{problem}{hint}{', or ' + QDQ_EXPORT if quantized else ''}.")


@dataclass
class _Paths:
    """Where a gradient can flow from the ``wrt`` tensors.

    ``carrying``: tensors a gradient reaches: float ones, integer ones carrying the gradient of their values,
    and those of unknown type (a rule, or the error for its lack, decides). ``integer_values``: those of them
    that hold integers (an untyped output of a com.microsoft quantised op among them). ``turned_integer``:
    integer tensors computed from a float path through an op no rule crosses, each with that op's node.
    """

    carrying: set[str]
    integer_values: set[str] = field(default_factory=set)
    turned_integer: dict[str, NodeProto] = field(default_factory=dict)

    def reaches(self, name: str) -> bool:
        return name in self.carrying or name in self.turned_integer


def backward(view: GraphView, output: str, seed: str, wrt: Sequence[str], builder: NodeBuilder,
             suggest: Optional[Callable[[NodeProto], Sequence[str]]] = None) -> dict[str, str]:
    """Emit d sum(seed * output) / d t into ``builder`` for every tensor t in ``wrt``; return t -> its gradient.

    A tensor ``output`` does not depend on gets zeros of its shape and type. ``suggest(node)`` names layers
    after ``node``, for the error raised when that node cannot be differentiated through.
    """
    ctx = GradContext(view, builder)
    paths = _gradient_paths(view, wrt)
    needed = view.ancestors([output])
    pending: dict[str, list[str]] = {output: [seed]}

    for node in reversed(view.nodes):
        if not any(paths.reaches(name) and name in needed for name in node.output):
            continue
        wants = [bool(name) and paths.reaches(name) for name in node.input]
        if not any(wants):  # e.g. the node producing a layer: nothing upstream needs a gradient
            continue
        dy = [_total(ctx, pending, name) for name in node.output]
        if all(g is None for g in dy):
            continue
        rule = _rule(node, dy, paths, suggest)
        rule_ctx, step = _step(ctx, node, dy, wants, paths)
        dx = _one_per_input(rule, node, rule(rule_ctx, step))
        for name, grad, want in zip(node.input, dx, wants):
            if want and grad is not None:
                pending.setdefault(name, []).append(grad)

    return {name: _total(ctx, pending, name) or ctx.zeros_like(name) for name in wrt}


def _rule(node: NodeProto, dy: Sequence[Optional[str]], paths: _Paths,
          suggest: Optional[Callable[[NodeProto], Sequence[str]]]) -> Callable:
    """The rule that takes the gradients ``dy`` back through ``node``; an error where none can."""
    later = (lambda: suggest(node)) if suggest else (lambda: [])
    for name, grad in zip(node.output, dy):
        if grad is not None and paths.turned_integer.get(name) is node:
            source = next((x for x in node.input if x in paths.carrying), node.input[0])
            raise UnsupportedOperatorError(
                node, later(), quantized=True,
                problem=(f"op {node.op_type!r} at node {node.name!r} turns the float tensor {source!r} into the "
                         f"integer tensor {name!r}, and no gradient rule crosses it: the gradient along that path "
                         "would be zero in silence."))
    rule = RULES.get(node_key(node))
    if rule is None:
        quantized = any(name in paths.integer_values for name in (*node.input, *node.output))
        raise UnsupportedOperatorError(node, later(), quantized=quantized)
    return rule


def _step(ctx: GradContext, node: NodeProto, dy: list[Optional[str]], wants: list[bool],
          paths: _Paths) -> tuple[GradContext, Step]:
    """The context and step the rule of ``node`` runs on: a float twin where integer values flow through an op
    that is not a quantised one."""
    integer_values = [want and name in paths.integer_values for name, want in zip(node.input, wants)]
    if not any(integer_values) or node_key(node) in QUANTIZED:
        return ctx, Step(node, dy, wants)
    twin_ctx, twin = _float_twin(ctx, node, dy, integer_values)
    return twin_ctx, Step(twin, dy, wants)


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


def _gradient_paths(view: GraphView, wrt: Sequence[str]) -> _Paths:
    """Follow ``wrt`` through the graph: which tensors carry a gradient, and which a float path turned integer.

    A quantised op's first output carries one. Any other op's float outputs carry one; its other outputs carry
    one where it computes them from integer values that do (or, untyped, from float ones), and are turned
    integer (by it, or by the op that turned its inputs) where it computes integers from float ones. Positions
    and masks (``NON_DIFFERENTIABLE_OUTPUTS``) carry none.
    """
    paths = _Paths(carrying=set(wrt))
    for node in view.nodes:
        key = node_key(node)
        inputs = [name for name in node.input if name]
        if key in NON_DIFFERENTIABLE or not any(paths.reaches(name) for name in inputs):
            continue
        if key in QUANTIZED:
            paths.carrying.add(node.output[0])
            if not view.is_float(node.output[0]):
                paths.integer_values.add(node.output[0])
            continue
        origins = [paths.turned_integer[name] for name in inputs if name in paths.turned_integer]
        from_integers = any(name in paths.integer_values for name in inputs)
        stopped = NON_DIFFERENTIABLE_OUTPUTS.get(key, ())
        for name in (name for index, name in enumerate(node.output) if name and index not in stopped):
            if view.is_float(name):
                paths.carrying.add(name)
            elif origins or (not from_integers and view.elem_type(name) is not None):
                paths.turned_integer[name] = origins[0] if origins else node
            else:
                paths.carrying.add(name)
                if from_integers:
                    paths.integer_values.add(name)
    return paths


def _float_twin(ctx: GradContext, node: NodeProto, dy: Sequence[Optional[str]],
                integer_values: Sequence[bool]) -> tuple[GradContext, NodeProto]:
    """``node`` met on integer values, as its float rule can take it: each input carrying the gradient of its
    integer values (``integer_values``) and each output of a type other than float replaced by a Cast of it to
    the gradient's float type, which stands in for it. Other inputs (shapes, indices) stay as they are.

    The gradient of an integer value is the gradient of that value held in a float, so the float rule gives it.
    """
    float_type = next(ctx.builder.elem_type(g) for g in dy if g is not None) or TensorProto.FLOAT
    stand_ins: dict[str, str] = {}

    def twin(name: str) -> str:
        if ctx.view.is_float(name):
            return name
        cast = ctx.op("Cast", name, to=float_type)
        stand_ins[cast] = name
        return cast

    inputs = [twin(name) if values else name for name, values in zip(node.input, integer_values)]
    outputs = [twin(name) if name else name for name in node.output]
    synthetic = helper.make_node(node.op_type, inputs, outputs, name=node.name, domain=node.domain)
    synthetic.attribute.extend(node.attribute)
    return ctx.with_stand_ins(stand_ins), synthetic


def _total(ctx: GradContext, pending: dict[str, list[str]], name: str) -> Optional[str]:
    """The accumulated gradient of ``name``: fan-out contributions are summed once, then cached."""
    grads = pending.get(name)
    if not grads:
        return None
    if len(grads) > 1:
        pending[name] = grads = [ctx.op("Sum", *grads)]
    return grads[0]
