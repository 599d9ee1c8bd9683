"""onnx-gradcam: Grad-CAM and its family for any ONNX model, on stock ONNX Runtime.

The backward pass of the part of the graph between the explained layer and the output is rebuilt out of
ordinary ONNX operators, so no training framework is needed at explain time.
"""

from __future__ import annotations

from typing import Optional, Union

from . import metadata as _metadata
from .autodiff import UnsupportedOperatorError, gradient_model, supported_ops
from .explainer import Explainer
from .explanation import Explanation, LayerGradients
from .export import export_explainer, export_triton
from .graph.default_layer import default_layer as choose_default, no_candidates
from .graph.layers import Layer, TokenGrid, candidate_layers
from .graph.model import ModelLike, load_model, normalize
from .graph.view import GraphView
from .subject import resolve_output
from .targets import Detection, Mask, Probability, Seeding

__version__ = "0.1.0"


def list_layers(model: ModelLike, output: Union[str, int, None] = None) -> list[Layer]:
    """The candidate target layers of ``model`` on the path to ``output``, in graph order."""
    return layers_and_default(model, output)[0]


def default_layer(model: ModelLike, output: Union[str, int, None] = None) -> Layer:
    """The layer ``layer="auto"`` explains at: for classifiers the last candidate, for dense prediction the
    deepest lowest-resolution feature map the output does not merely re-arrange (see
    :mod:`onnx_gradcam.graph.default_layer`)."""
    candidates, default, output_name = layers_and_default(model, output)
    if default is None:
        raise no_candidates(output_name)
    return default


def layers_and_default(model: ModelLike, output: Union[str, int, None] = None
                       ) -> tuple[list[Layer], Optional[Layer], str]:
    """:func:`list_layers`, :func:`default_layer` (None where there is no candidate) and the output's name,
    from one load of the model."""
    view = GraphView(normalize(load_model(model)))
    output_name = resolve_output(view, output)
    candidates = candidate_layers(view, output_name, _metadata.read(view.model))
    return candidates, choose_default(view, candidates, output_name) if candidates else None, output_name


__all__ = ["Detection", "Explainer", "Explanation", "Layer", "LayerGradients", "Mask", "Probability", "Seeding", "TokenGrid",
           "UnsupportedOperatorError", "default_layer", "export_explainer", "export_triton", "gradient_model", "list_layers", "supported_ops"]
