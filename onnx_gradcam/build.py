"""Building the explainer model: the forward graph, the head's backward pass, and the CAM, in one ONNX model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from onnx import ModelProto, TensorProto, helper

from .autodiff import backward
from .autodiff.emit import Emitter
from .graph.assemble import extend_model, keep_outputs, tensor_info
from .graph.layers import Layer
from .graph.view import GraphView
from .maps import combine, image_size, normalize, upsample
from .methods.gradient import channel_map, gradient_method
from .targets import class_seed

CLASS_INPUT = "target_class"
SEED_INPUT = "target_seed"
IMAGE_SIZE_INPUT = "image_size"
CAM_OUTPUT = "cam"
CLASS_OUTPUT = "explained_class"


def raw_output(layer: Layer) -> str:
    return f"cam_raw/{layer.tensor}"


def gradient_output(layer: Layer) -> str:
    return f"grad/{layer.tensor}"


def contribution_output(layer: Layer) -> str:
    return f"contrib/{layer.tensor}"


def as_map(e: Emitter, tensor: str, layer: Layer) -> str:
    """The layer's tensor as a map: token activations sliced past the skipped tokens and laid on their grid."""
    if layer.tokens is None:
        return tensor
    grid = layer.tokens
    kept = e.op("Slice", tensor, e.ints([grid.skip]), e.ints([2**62]), e.ints([1]))
    return e.op("Reshape", kept, e.ints([0, grid.height, grid.width, -1]))


@dataclass
class ExplainerModel:
    """An explainer model and the names of its parts."""

    model: ModelProto
    layers: list[Layer]
    output: str
    target_input: Optional[str]
    model_outputs: list[str]
    class_output: Optional[str]
    has_maps: bool = True

    @property
    def activation_outputs(self) -> list[str]:
        return [layer.tensor for layer in self.layers]

    @property
    def gradient_outputs(self) -> list[str]:
        return [gradient_output(layer) for layer in self.layers]

    @property
    def raw_outputs(self) -> list[str]:
        return [raw_output(layer) for layer in self.layers]

    @property
    def contribution_outputs(self) -> list[str]:
        return [contribution_output(layer) for layer in self.layers]


def build_explainer_model(view: GraphView, layers: Sequence[Layer], output: str, method: Optional[str],
                          target: str, image: Optional[str], image_layout: str = "NCHW",
                          later_layers=None, contributions_only: bool = False) -> ExplainerModel:
    """The forward graph plus the head's backward pass and, for a gradient ``method``, the maps.

    ``target``: ``"class"`` (int64 class per image, -1 for the top class), ``"probability"`` (the same classes'
    softmax probabilities), ``"top"`` (always the top class, no target input) or ``"seed"`` (a float seed
    shaped like ``output``). ``image``: the input whose
    (H, W) maps are upsampled to; None adds an int64 ``image_size`` input instead (for head models).
    ``method`` None leaves the maps to the host: activations and gradients only. ``contributions_only``
    stops a gradient method at its per-channel contributions (``contrib/<layer>``), for the host's SVD
    (``eigen_smooth``).
    """
    compute_map = gradient_method(method) if method else None
    elem_type = view.elem_type(output)
    e = Emitter("explain/", view.all_tensor_names() | {o for n in view.nodes for o in n.output})
    inputs = []
    if target in ("class", "probability", "top"):
        if view.rank(output) != 2:
            raise ValueError(f"output {output!r} has shape {view.shape(output)}; class targets need (N, classes). "
                             "Give a seed array, a Mask or a Detection target instead")
        target_input = None if target == "top" else CLASS_INPUT
        if target_input:
            inputs.append(tensor_info(CLASS_INPUT, TensorProto.INT64, [view.shape(output)[0]]))
        seed, chosen = class_seed(e, output, target_input, elem_type, probability=target == "probability")
    else:
        target_input, seed, chosen = SEED_INPUT, SEED_INPUT, None
        inputs.append(tensor_info(SEED_INPUT, elem_type, view.shape(output)))
    if image is None:
        inputs.append(tensor_info(IMAGE_SIZE_INPUT, TensorProto.INT64, [2]))
        size, image_hw = IMAGE_SIZE_INPUT, [None, None]
    else:
        size = image_size(e, image, image_layout)
        image_shape = view.shape(image)
        image_hw = image_shape[2:4] if image_layout == "NCHW" else image_shape[1:3]

    seed_nodes = len(e.nodes)
    grads = backward(view, output, seed, [layer.tensor for layer in layers], later_layers)
    batch = view.shape(output)[0]
    finals, named = [], []  # named: (tensor, output name, element type, shape)
    for layer in layers:
        named.append((grads.names[layer.tensor], gradient_output(layer), elem_type, view.shape(layer.tensor)))
        if compute_map is not None:
            contributions = compute_map(e, *(as_map(e, t, layer) for t in (layer.tensor, grads.names[layer.tensor])),
                                        layer)
            if contributions_only:
                named.append((contributions, contribution_output(layer), elem_type, list(layer.shape)))
                continue
            raw = channel_map(e, contributions, layer)
            layer_hw = [layer.shape[axis] for axis in layer.spatial_axes]
            named.append((raw, raw_output(layer), elem_type, [batch, *layer_hw]))
            finals.append(upsample(e, normalize(e, raw), size))
    if finals:
        named.append((combine(e, finals), CAM_OUTPUT, elem_type, [batch, *image_hw]))
    if chosen is not None:
        named.append((chosen, CLASS_OUTPUT, TensorProto.INT64, [batch]))
    renames = [helper.make_node("Identity", [source], [name], name=f"explain/output_{i}")
               for i, (source, name, _, _) in enumerate(named)]

    outputs = [tensor_info(layer.tensor, view.elem_type(layer.tensor), view.shape(layer.tensor))
               for layer in layers if layer.tensor not in view.output_names]
    outputs += [tensor_info(name, kind, shape) for _, name, kind, shape in named]
    clashes = {name for _, name, _, _ in named} & (view.all_tensor_names() | set(view.output_names))
    if clashes:
        raise ValueError(f"the model already has tensors named {sorted(clashes)}, which the explainer adds")
    model = extend_model(view.model, e.nodes[:seed_nodes] + grads.nodes + e.nodes[seed_nodes:] + renames,
                         grads.initializers + e.initializers, inputs=inputs, outputs=outputs)
    return ExplainerModel(model, list(layers), output, target_input, view.output_names, chosen and CLASS_OUTPUT,
                          has_maps=bool(finals))


def deployable_model(built: ExplainerModel) -> ModelProto:
    """The explainer model as it is deployed: the original inputs (plus ``target_class`` where the explainer
    takes one), the original outputs plus ``cam``; activations, gradients and raw maps are left out."""
    if not built.has_maps:
        raise ValueError("this explainer model computes no maps in the graph (a host method)")
    return keep_outputs(built.model, built.model_outputs + [CAM_OUTPUT])
