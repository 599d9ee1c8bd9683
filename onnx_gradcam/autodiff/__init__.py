"""Reverse-mode differentiation of ONNX graphs, emitted as ordinary ONNX operators.

It knows ONNX operators and their derivatives, nothing of CAMs, images or sessions.
"""

from .backward import UnsupportedOperatorError, backward
from .model import gradient_model, gradient_names
from .registry import supported_ops

__all__ = ["UnsupportedOperatorError", "backward", "gradient_model", "gradient_names", "supported_ops"]
