"""Adjoint checks for Gemm and MatMul, with respect to every operand."""

import numpy as np
import pytest

from adjoint import attr_text, check_adjoint, model_text, shape_text

M, K, N = 3, 4, 5


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha, beta", [(1.0, 1.0), (0.5, -2.0)])
def test_gemm_transposes(trans_a, trans_b, alpha, beta):
    a, b = [K, M] if trans_a else [M, K], [N, K] if trans_b else [K, N]
    attrs = attr_text({"transA": trans_a, "transB": trans_b, "alpha": alpha, "beta": beta})
    text = model_text(f"y = Gemm{attrs}(a, b, c)", f"float{shape_text(a)} a, float{shape_text(b)} b, float[{M},{N}] c",
                      f"float[{M},{N}] y")
    check_adjoint(text, ["a", "b", "c"])


@pytest.mark.parametrize("c_shape", [[N], [], [M, 1], [1, N], [M, N]], ids=["N", "scalar", "Mx1", "1xN", "MxN"])
def test_gemm_broadcast_c(c_shape):
    text = model_text("y = Gemm<transB=1, beta=0.75>(a, b, c)",
                      f"float[{M},{K}] a, float[{N},{K}] b, float{shape_text(c_shape)} c", f"float[{M},{N}] y")
    check_adjoint(text, ["a", "b", "c"])


def test_gemm_without_c():
    text = model_text("y = Gemm<transA=1, alpha=2.0>(a, b)", f"float[{K},{M}] a, float[{K},{N}] b", f"float[{M},{N}] y")
    check_adjoint(text, ["a", "b"])


def test_gemm_constant_weights():
    """The usual form: a Linear layer whose B and C are initializers, differentiated w.r.t. the activation."""
    rng = np.random.default_rng(10)
    weights = ", ".join(f"{v:.4f}" for v in rng.standard_normal(N * K))
    bias = ", ".join(f"{v:.4f}" for v in rng.standard_normal(N))
    text = model_text("y = Gemm<transB=1>(a, w, c)", f"float[{M},{K}] a", f"float[{M},{N}] y",
                      initializers=f"float[{N},{K}] w = {{{weights}}}, float[{N}] c = {{{bias}}}")
    check_adjoint(text, ["a"])


MATMUL_SHAPES = {
    "2dx2d": ([3, 4], [4, 5]),
    "1dx2d": ([4], [4, 5]),
    "2dx1d": ([3, 4], [4]),
    "1dx3d": ([4], [2, 4, 5]),
    "3dx1d": ([2, 3, 4], [4]),
    "3dx2d": ([2, 3, 4], [4, 5]),
    "2dx3d": ([3, 4], [2, 4, 5]),
    "4dx4d_broadcast": ([2, 1, 3, 4], [1, 5, 4, 6]),
    "4dx3d_broadcast": ([2, 3, 3, 4], [3, 4, 6]),
}


@pytest.mark.parametrize("a_shape, b_shape", MATMUL_SHAPES.values(), ids=MATMUL_SHAPES.keys())
def test_matmul(a_shape, b_shape):
    y_shape = np.matmul(np.zeros(a_shape), np.zeros(b_shape)).shape
    inputs = f"float{shape_text(a_shape)} a, float{shape_text(b_shape)} b"
    text = model_text("y = MatMul(a, b)", inputs, f"float{shape_text(y_shape)} y")
    check_adjoint(text, ["a", "b"])


def test_matmul_symbolic_batch():
    text = model_text("y = MatMul(a, b)", "float[N,3,4] a, float[4,5] b", "float[N,3,5] y")
    rng = np.random.default_rng(11)
    check_adjoint(text, ["a", "b"], inputs={"a": rng.standard_normal((2, 3, 4)).astype(np.float32)})
