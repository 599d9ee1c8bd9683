"""Gradient rules, one module per family of ops; importing this package registers them all."""

from . import (  # noqa: F401
    arithmetic,
    contrib,
    conv,
    elementwise,
    linalg,
    normalization,
    pooling,
    quantization,
    reduction,
    resize,
    shape,
    indexing,
)
