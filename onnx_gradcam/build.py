"""Building the explainer model: the forward graph, the seed, the head's backward pass and the maps, in one
ONNX model. Each step adds its nodes to one :class:`~onnx_gradcam.graph.builder.NodeBuilder`, so names never
clash and every constant has the type of the tensor it meets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from onnx import ModelProto, TensorProto, ValueInfoProto

from . import maps
from .autodiff import backward
from .graph.assemble import extend_model, keep_outputs, tensor_info
from .graph.builder import NodeBuilder, node_attributes
from .graph.layers import Layer
from .graph.layout import image_hw
from .graph.promote import Twin, float32_twin
from .graph.view import GraphView
from .methods import GRADIENT_METHODS, channel_map
from .subject import Subject
from .targets import Seeding, class_seed

CLASS_INPUT = "target_class"
SEED_INPUT = "target_seed"
IMAGE_SIZE_INPUT = "image_size"
CAM_OUTPUT = "cam"
LAYER_CAM_OUTPUT = "cam/{}"
CLASS_OUTPUT = "explained_class"


@dataclass
class ExplainerModel:
    """An explainer model and the names of its parts (each name as claimed in this model: the usual one unless
    the model already had a tensor of that name). Per-layer lists follow the subject's layers."""

    model: ModelProto
    seeding: Seeding
    target_input: Optional[str] = None
    image_size_input: Optional[str] = None
    model_outputs: list[str] = field(default_factory=list)
    activations: list[str] = field(default_factory=list)
    gradients: list[str] = field(default_factory=list)
    contributions: list[str] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    cam: Optional[str] = None
    layer_cams: list[str] = field(default_factory=list)
    class_output: Optional[str] = None


@dataclass
class _Interface:
    """The inputs and outputs a build adds to the model."""

    inputs: list[ValueInfoProto] = field(default_factory=list)
    outputs: list[ValueInfoProto] = field(default_factory=list)

    def add_input(self, b: NodeBuilder, name: str, elem_type: int, shape) -> str:
        claimed = b.claim(name)
        self.inputs.append(tensor_info(claimed, elem_type, shape))
        return claimed

    def add_output(self, b: NodeBuilder, source: str, name: str, elem_type: int, shape) -> str:
        claimed = b.rename(source, b.claim(name))
        self.outputs.append(tensor_info(claimed, elem_type, shape))
        return claimed


def build_explainer_model(subject: Subject, seeding: Seeding, method: Optional[str] = None,
                          contributions_only: bool = False) -> ExplainerModel:
    """The forward graph plus the head's backward pass and, for a gradient ``method``, the maps.

    ``method`` None leaves the maps to the host: activations and gradients only. ``contributions_only`` stops a
    gradient method at its per-channel contributions, for the host's SVD (``eigen_smooth``).
    """
    view, layers = subject.view, [layer.tensor for layer in subject.layers]
    sources = [layer.blocked or layer.tensor for layer in subject.layers]  # what the network computes on
    twin = float32_twin(view, sources, subject.output) if subject.precision == "float32" else Twin(view, {})
    b, io = twin.view.builder(), _Interface()
    built = ExplainerModel(model=view.model, seeding=seeding, model_outputs=view.output_names)
    seed = _seed_step(b, io, subject, built, twin)
    backward_pass = backward(twin.view, twin[subject.output], seed, [twin[source] for source in sources], b,
                             subject.layers_after)
    gradients = {layer.tensor: _as_layer_gradient(b, view, layer, backward_pass[twin[source]])
                 for layer, source in zip(subject.layers, sources)}
    for layer, source in zip(layers, sources):
        if layer not in view.output_names:
            io.outputs.append(tensor_info(layer, view.elem_type(layer), view.shape(layer)))
        built.activations.append(layer)
        built.gradients.append(io.add_output(b, gradients[layer], f"grad/{layer}",
                                             twin.view.elem_type(twin[source]) or view.elem_type(layer),
                                             view.shape(layer)))
    if method is not None:
        _maps_step(b, io, subject, built, gradients, method, contributions_only)
    built.model = extend_model(twin.view.model, b.nodes, b.initializers, inputs=io.inputs, outputs=io.outputs)
    return built


def _as_layer_gradient(b: NodeBuilder, view: GraphView, layer: Layer, gradient: str) -> str:
    """The gradient at the layer's tensor: at a blocked tensor's NCHW copy, the blocked gradient reordered as
    the copy was (the copy keeps the same elements, less the padding channels)."""
    if layer.blocked is None:
        return gradient
    copy = view.producer[layer.tensor]
    return b.op(copy.op_type, gradient, domain=copy.domain, **node_attributes(copy))


def _seed_step(b: NodeBuilder, io: _Interface, subject: Subject, built: ExplainerModel, twin: Twin) -> str:
    """The seed of the backward pass (in the type of the output's twin), from a class input, the top class of
    the model's output or a seed input."""
    view, output = subject.view, subject.output
    if built.seeding is Seeding.SEED:
        built.target_input = io.add_input(b, SEED_INPUT, view.elem_type(output), view.shape(output))
        return b.cast(built.target_input, twin.view.elem_type(twin[output]))
    if view.rank(output) != 2:
        raise ValueError(f"output {output!r} has shape {view.shape(output)}; class targets need (N, classes). "
                         "Give a seed array, a Mask or a Detection target instead (to export: targets='seed')")
    if built.seeding is not Seeding.TOP:
        built.target_input = io.add_input(b, CLASS_INPUT, TensorProto.INT64, view.shape(output)[:1])
    seed, chosen = class_seed(b, twin[output], built.target_input, probability=built.seeding is Seeding.PROBABILITY,
                              ranked=output)
    built.class_output = io.add_output(b, chosen, CLASS_OUTPUT, TensorProto.INT64, view.shape(output)[:1])
    return seed


def _maps_step(b: NodeBuilder, io: _Interface, subject: Subject, built: ExplainerModel, gradients: dict,
               method: str, contributions_only: bool) -> None:
    """Per layer the method's contributions, then the raw map; then the final map at the image's size."""
    view = subject.view
    batch = view.shape(subject.output)[0]
    raws = []
    for layer in subject.layers:
        raw_type = maps.map_type(view.elem_type(layer.tensor))
        activations, layer_gradients = (_as_map(b, b.cast(t, raw_type), layer)
                                        for t in (layer.tensor, gradients[layer.tensor]))
        contributions = GRADIENT_METHODS[method](b, activations, layer_gradients, layer)
        if contributions_only:
            built.contributions.append(io.add_output(b, contributions, f"contrib/{layer.tensor}", raw_type,
                                                     list(layer.shape)))
            continue
        raw = channel_map(b, contributions, layer)
        hw = [layer.shape[axis] for axis in layer.spatial_axes]
        built.raw.append(io.add_output(b, raw, f"cam_raw/{layer.tensor}", raw_type, [batch, *hw]))
        raws.append(raw)
    if raws:
        size, image_hw = _image_size_step(b, io, subject, built)
        cam, layer_cams = maps.finish(b, raws, size)
        built.cam = io.add_output(b, cam, CAM_OUTPUT, maps.CAM_TYPE, [batch, *image_hw])
        built.layer_cams = [built.cam] if len(raws) == 1 else [
            io.add_output(b, layer_cam, LAYER_CAM_OUTPUT.format(layer.tensor), maps.CAM_TYPE, [batch, *image_hw])
            for layer, layer_cam in zip(subject.layers, layer_cams)]


def _image_size_step(b: NodeBuilder, io: _Interface, subject: Subject, built: ExplainerModel):
    """(the (H, W) tensor maps are upsampled to, its static dims): the image's, or an input for head models."""
    if subject.image_input is None:
        built.image_size_input = io.add_input(b, IMAGE_SIZE_INPUT, TensorProto.INT64, [2])
        return built.image_size_input, [None, None]
    static_hw = image_hw(subject.view.shape(subject.image_input), subject.image_layout)
    return maps.image_size(b, subject.image_input, subject.image_layout), static_hw


def _as_map(b: NodeBuilder, tensor: str, layer: Layer) -> str:
    """The layer's tensor as a map: token activations sliced past the skipped tokens and laid on their grid."""
    if layer.tokens is None:
        return tensor
    grid = layer.tokens
    kept = b.op("Slice", tensor, b.ints([grid.skip]), b.ints([2**62]), b.ints([1]))
    return b.op("Reshape", kept, b.ints([0, grid.height, grid.width, -1]))


def deployable_model(built: ExplainerModel) -> ModelProto:
    """The explainer model as it is deployed: the original inputs (plus ``target_class`` where the explainer
    takes one), the original outputs plus ``cam``; activations, gradients and raw maps are left out."""
    if built.cam is None:
        raise ValueError("this explainer model computes no maps in the graph (a host method)")
    return keep_outputs(built.model, built.model_outputs + [built.cam])
