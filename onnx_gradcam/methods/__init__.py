"""The CAM family: how a method turns a layer's activations (and gradients) into a map.

Gradient methods are emitted into the explainer model (:mod:`.gradient`); the others need an SVD or extra
model runs and work on the host (:mod:`.eigen`, :mod:`.perturbation`).
"""

from . import eigen, perturbation
from .gradient import GRADIENT_METHODS, gradient_method

HOST_METHODS = ("eigencam", "eigengradcam", "scorecam", "ablationcam")
METHODS = tuple(GRADIENT_METHODS) + HOST_METHODS


def check_method(name: str) -> str:
    """The method's canonical name; a clear error for an unknown one."""
    if name.lower() not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return name.lower()


__all__ = ["GRADIENT_METHODS", "HOST_METHODS", "METHODS", "check_method", "eigen", "gradient_method", "perturbation"]
