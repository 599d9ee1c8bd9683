"""Reverse-mode differentiation of ONNX graphs, emitted as ordinary ONNX operators.

It knows ONNX operators and their derivatives, nothing of CAMs, images or sessions.
"""

from .backward import Gradients, UnsupportedOperatorError, backward
from .model import gradient_model
from .registry import supported_ops

__all__ = ["Gradients", "UnsupportedOperatorError", "backward", "gradient_model", "supported_ops"]
