"""The CAM family: how a method turns a layer's activations (and gradients) into a map.

Gradient methods are emitted into the explainer model (:mod:`.gradient`); the others need an SVD or extra
model runs and work on the host (:mod:`.host`, built on :mod:`.eigen` and :mod:`.perturbation`). Both are
registries keyed by the method's name.
"""

from .gradient import GRADIENT_METHODS, GradientMethod, channel_map
from .host import HOST_METHODS, HostMethod, LayerEvidence

METHODS = tuple(GRADIENT_METHODS) + tuple(HOST_METHODS)


def check_method(name: str) -> str:
    """The method's canonical name; a clear error for an unknown one."""
    if name.lower() not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return name.lower()


__all__ = ["GRADIENT_METHODS", "HOST_METHODS", "METHODS", "GradientMethod", "HostMethod", "LayerEvidence",
           "channel_map", "check_method"]
