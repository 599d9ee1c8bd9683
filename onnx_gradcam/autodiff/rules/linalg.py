"""Matrix products."""

from __future__ import annotations

from ..context import GradContext, Step
from ..registry import rule


@rule("Gemm")
def _gemm(g: GradContext, s: Step):
    # Y = alpha * A' B' + beta * C, A' = A or A^T (transA), B' likewise.
    a, b = s.x[0], s.x[1]
    dy = s.dy[0]
    alpha, beta = s.attr("alpha", 1.0), s.attr("beta", 1.0)
    trans_a, trans_b = s.attr("transA", 0), s.attr("transB", 0)
    grads = [None] * len(s.x)
    if s.wants[0]:  # dA' = alpha dY B'^T
        grads[0] = (g.op("Gemm", b, dy, alpha=alpha, transA=trans_b, transB=1) if trans_a
                    else g.op("Gemm", dy, b, alpha=alpha, transB=1 - trans_b))
    if s.wants[1]:  # dB' = alpha A'^T dY
        grads[1] = (g.op("Gemm", dy, a, alpha=alpha, transA=1, transB=trans_a) if trans_b
                    else g.op("Gemm", a, dy, alpha=alpha, transA=1 - trans_a))
    if len(s.x) > 2 and s.wants[2]:
        scaled = dy if beta == 1.0 else g.op("Mul", dy, g.scalar(beta, s.y[0]))
        grads[2] = g.unbroadcast(scaled, s.x[2], s.y[0])
    return grads


@rule("MatMul")
def _matmul(g: GradContext, s: Step):
    # numpy semantics: a 1-D left operand is a row vector, a 1-D right operand a column vector, and the
    # batch dims broadcast. Promote both to matrices, differentiate, sum broadcast dims away, drop the axis.
    a, b = s.x
    a_shape, b_shape, y_shape = g.shape(a), g.shape(b), g.shape(s.y[0])
    if a_shape is None or b_shape is None or y_shape is None:
        raise ValueError(f"MatMul node {s.name!r}: the ranks of its operands are unknown")
    a2, a2_shape = (g.op("Unsqueeze", a, g.ints([0])), [1, *a_shape]) if len(a_shape) == 1 else (a, a_shape)
    b2, b2_shape = (g.op("Unsqueeze", b, g.ints([1])), [*b_shape, 1]) if len(b_shape) == 1 else (b, b_shape)
    dy = s.dy[0]
    if len(a_shape) == 1:
        dy = g.op("Unsqueeze", dy, g.ints([-2]))
    if len(b_shape) == 1:
        dy = g.op("Unsqueeze", dy, g.ints([-1]))
    batch = list(y_shape[: len(y_shape) - (len(a_shape) > 1) - (len(b_shape) > 1)])
    grads = [None, None]
    if s.wants[0]:
        da = g.op("MatMul", dy, _swap_last_two(g, b2, len(b2_shape)))
        grads[0] = g.sum_to(da, batch + a2_shape[-2:], a, a2_shape)
    if s.wants[1]:
        db = g.op("MatMul", _swap_last_two(g, a2, len(a2_shape)), dy)
        grads[1] = g.sum_to(db, batch + b2_shape[-2:], b, b2_shape)
    return grads


def _swap_last_two(g: GradContext, name: str, rank: int) -> str:
    return g.op("Transpose", name, perm=list(range(rank - 2)) + [rank - 1, rank - 2])
