"""Window arithmetic of pooling ops, as the ONNX spec (and ONNX Runtime, and torch) define it."""

from __future__ import annotations


def pooled_size(size: int, kernel: int, stride: int, dilation: int, begin: int, end: int, ceil_mode: int) -> int:
    """A pool's output size. In ceil mode a last window that would start in the end pad is dropped.

    onnx's shape inference keeps that window, and so does ONNX Runtime's load-time inference (its kernels
    drop it): a gradient model meeting such a pool fails to load with "Incompatible dimensions" — loudly,
    never with a wrong map. tests/test_rules_pooling.py keeps those cases as strict xfails.
    """
    span = size + begin + end - (kernel - 1) * dilation - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    return out - 1 if ceil_mode and (out - 1) * stride >= size + begin else out
