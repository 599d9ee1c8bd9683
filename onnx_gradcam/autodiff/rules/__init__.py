"""Gradient rules, one module per family of ops; importing this package registers them all."""

from . import (  # noqa: F401
    arithmetic,
    conv,
    elementwise,
    linalg,
    normalization,
    pooling,
    reduction,
    resize,
    shape,
    indexing,
)
