"""Broadcasting arithmetic: each operand's gradient is summed back down to the operand's own shape."""

from __future__ import annotations

from ..context import GradContext, Step
from ..registry import rule


def _each(g: GradContext, s: Step, local) -> list:
    """Per input i that wants a gradient: unbroadcast(local(i)), where local gives the broadcast-shaped term."""
    return [g.unbroadcast(local(i), x, s.y[0]) if want else None for i, (x, want) in enumerate(zip(s.x, s.wants))]


@rule("Add", "Sum")
def _add(g: GradContext, s: Step):
    return _each(g, s, lambda i: s.dy[0])


@rule("Sub")
def _sub(g: GradContext, s: Step):
    return _each(g, s, lambda i: s.dy[0] if i == 0 else g.op("Neg", s.dy[0]))


@rule("Mean")
def _mean(g: GradContext, s: Step):
    share = g.op("Div", s.dy[0], g.scalar(len(s.x), s.y[0]))
    return _each(g, s, lambda i: share)


@rule("Mul")
def _mul(g: GradContext, s: Step):
    a, b = s.x
    return _each(g, s, lambda i: g.op("Mul", s.dy[0], b if i == 0 else a))


@rule("Div")
def _div(g: GradContext, s: Step):
    a, b = s.x
    # d(a/b)/da = 1/b; d(a/b)/db = -y/b
    return _each(g, s, lambda i: g.op("Div", s.dy[0], b) if i == 0
                 else g.op("Neg", g.op("Div", g.op("Mul", s.dy[0], s.y[0]), b)))


@rule("Pow")
def _pow(g: GradContext, s: Step):
    base, exponent = s.x
    y = s.y[0]

    def local(i):
        if i == 0:  # p * x^(p-1), written as p * x^p / x would fail at x = 0
            exponent_as_base = g.op("Cast", exponent, to=g.view.elem_type(base))
            lowered = g.op("Pow", base, g.op("Sub", exponent_as_base, g.scalar(1.0, base)))
            return g.op("Mul", s.dy[0], g.op("Mul", exponent_as_base, lowered))
        return g.op("Mul", s.dy[0], g.op("Mul", y, g.op("Log", base)))

    return _each(g, s, local)


@rule("Max", "Min")
def _extremum(g: GradContext, s: Step):
    # Ties share the gradient equally, as torch.maximum / torch.minimum do.
    y = s.y[0]
    hits = [g.mask(g.op("Equal", x, y), y) for x in s.x]
    count = hits[0] if len(hits) == 1 else g.op("Sum", *hits)
    share = g.op("Div", s.dy[0], count)
    return _each(g, s, lambda i: g.op("Mul", share, hits[i]))


@rule("Where")
def _where(g: GradContext, s: Step):
    condition = s.x[0]
    zero = g.scalar(0.0, s.y[0])
    return [None] + [
        g.unbroadcast(g.op("Where", condition, s.dy[0], zero) if i == 1 else g.op("Where", condition, zero, s.dy[0]),
                      s.x[i], s.y[0]) if s.wants[i] else None
        for i in (1, 2)
    ]
