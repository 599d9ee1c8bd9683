"""What an Explainer explains, resolved once from the user's arguments: the model, the output, the layers and
the image input. Everything after this works on a :class:`Subject`, never on the raw arguments."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Optional, Sequence, Union

import numpy as np
from onnx import NodeProto

from .graph.layers import Layer, TokenGrid, candidate_layers, resolve_layer
from .graph.layout import guess_input_layout, image_hw
from .graph.view import GraphView
from .metadata import Metadata

Output = Union[str, int, None]
LAYOUTS = ("NCHW", "NHWC")
PRECISIONS = ("float32", "model")
"""``float32``: a float16 or bfloat16 head is recomputed in float32 for the backward pass (float32 and float64
heads are left as they are); ``model``: every gradient in the model's own type."""


@dataclass(frozen=True)
class Subject:
    """A model (its view), the output explained, the layers explained at and the image input.

    ``keys`` name each layer's results: the name the user gave ("auto" by the layer's own name).
    ``image_input`` is None for a cut-out head, whose maps are upsampled to a size fed at run time.
    ``precision``: what the backward pass of a float16 or bfloat16 head accumulates in (see ``PRECISIONS``).
    """

    view: GraphView
    output: str
    layers: tuple[Layer, ...]
    keys: tuple[str, ...]
    image_input: Optional[str]
    image_layout: str = "NCHW"
    candidates: tuple[Layer, ...] = ()
    precision: str = "float32"

    def layers_after(self, node: NodeProto) -> list[str]:
        """Candidate layers computed by ``node`` or after it, nearest first (for the no-rule error)."""
        position = self.view.position.get(node.name)
        producers = self.view.producer
        return [layer.display_name for layer in self.candidates
                if position is not None and layer.tensor in producers
                and self.view.position[producers[layer.tensor].name] >= position]

    def image_size(self, feeds: Mapping[str, np.ndarray]) -> tuple[int, int]:
        """(H, W) of the image input in ``feeds``."""
        return tuple(image_hw(feeds[self.image_input].shape, self.image_layout))

    def head(self, head_view: GraphView) -> "Subject":
        """The same layers and output over a cut-out head: no image input (the size is fed instead)."""
        return replace(self, view=head_view, image_input=None)


def resolve_subject(view: GraphView, metadata: Metadata, layer: Union[str, Sequence[str]], output: Output,
                    tokens: Optional[TokenGrid], layout: Optional[str], precision: str = "float32") -> Subject:
    """The :class:`Subject` the user's arguments name; clear errors for unknown outputs, layers, layouts and
    precisions."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {list(PRECISIONS)}")
    output_name = resolve_output(view, output)
    candidates = candidate_layers(view, output_name, metadata)
    if layer == "all":
        if not candidates:
            raise ValueError(f"layer='all': output {output_name!r} is computed from no candidate layer (no rank-4 "
                             "activation); name a tensor instead")
        layers, keys = list(candidates), [found.display_name for found in candidates]
    else:
        specs = [layer] if isinstance(layer, str) else list(layer)
        if not specs:
            raise ValueError("layer=[] names no layer; give 'auto', 'all', a layer name or a list of them")
        layers = [resolve_layer(view, spec, output_name, candidates, metadata, tokens) for spec in specs]
        keys = [found.display_name if spec == "auto" else spec for spec, found in zip(specs, layers)]
    image_input, image_layout = _image_input(view, metadata, layout)
    return Subject(view, output_name, tuple(layers), tuple(keys), image_input, image_layout, tuple(candidates),
                   precision)


def resolve_output(view: GraphView, output: Output) -> str:
    """The name of the output explained: by name, by index, or the first."""
    names = view.output_names
    if output is None:
        return names[0]
    if isinstance(output, int):
        if not -len(names) <= output < len(names):
            raise ValueError(f"output index {output} is out of range; the model has outputs {names}")
        return names[output]
    if output not in names:
        raise ValueError(f"no output named {output!r}; the model's outputs are {names}")
    return output


def _image_input(view: GraphView, meta: Metadata, layout: Optional[str]) -> tuple[str, str]:
    """The first float rank-4 input, and its layout (as given, from metadata, else guessed from where channels
    sit)."""
    if layout not in (None, *LAYOUTS):
        raise ValueError(f"layout={layout!r}: the image input's layout is 'NCHW' or 'NHWC'")
    for name in view.input_names:
        shape = view.shape(name)
        if view.is_float(name) and shape is not None and len(shape) == 4:
            return name, layout or meta.input_layout or guess_input_layout(shape)
    raise ValueError(f"the model has no image input of rank 4; its inputs are {view.input_names}")
