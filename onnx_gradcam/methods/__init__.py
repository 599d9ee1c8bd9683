"""The CAM family: how a method turns a layer's activations (and gradients) into a map."""

from .gradient import GRADIENT_METHODS, gradient_method

__all__ = ["GRADIENT_METHODS", "gradient_method"]
