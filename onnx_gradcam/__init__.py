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
from .graph.places import Place, places
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
    candidates, default, output_name, _ = layers_and_default(model, output)
    if default is None:
        raise no_candidates(output_name)
    return default


def layer_places(model: ModelLike, output: Union[str, int, None] = None) -> dict[str, Place]:
    """What kind of place each candidate layer is, by tensor: a cut, inside a residual branch or a branch
    before a merge (with the merge and the block output to use instead), its depth and stride (see
    :mod:`onnx_gradcam.graph.places`)."""
    return layers_and_default(model, output)[3]


def layers_and_default(model: ModelLike, output: Union[str, int, None] = None
                       ) -> tuple[list[Layer], Optional[Layer], str, dict[str, Place]]:
    """:func:`list_layers`, :func:`default_layer` (None where there is no candidate), the output's name and
    :func:`layer_places`, from one load of the model."""
    view = GraphView(normalize(load_model(model)))
    output_name = resolve_output(view, output)
    candidates = candidate_layers(view, output_name, _metadata.read(view.model))
    default = choose_default(view, candidates, output_name) if candidates else None
    return candidates, default, output_name, places(view, output_name, candidates)


def __getattr__(name: str):
    """``onnx_gradcam.scan``, imported on first use: it brings scipy and matplotlib, which explaining does not
    need."""
    if name == "scan":
        from .scanning import scan

        return scan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Detection", "Explainer", "Explanation", "Layer", "LayerGradients", "Mask", "Place", "Probability",
           "Seeding", "TokenGrid", "UnsupportedOperatorError", "default_layer", "export_explainer", "export_triton",
           "gradient_model", "layer_places", "list_layers", "scan", "supported_ops"]
