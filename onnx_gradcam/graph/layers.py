"""Candidate target layers: which tensors a CAM can be computed at, what the framework called them, and the default."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from typing import Optional, Sequence

from ..metadata import Metadata
from .default_layer import default_layer
from .layout import NCHWC, guess_input_layout, infer_layouts
from .tf_names import is_tf2onnx, tf2onnx_layer_names
from .torch_names import module_scopes
from .view import Dim, GraphView



@dataclass(frozen=True)
class TokenGrid:
    """How (N, tokens, C) activations (a vision transformer's) become an (N, height, width, C) map: drop the
    first ``skip`` tokens (the class token), lay the rest out row by row, as pytorch-grad-cam's
    ``reshape_transform`` for ViT does."""

    height: int
    width: int
    skip: int = 1


@dataclass(frozen=True)
class Layer:
    """A tensor of the graph a CAM can be computed at.

    ``name`` is the framework's name for it where known (a PyTorch module path, a Keras layer name),
    ``aliases`` the other framework names of the same tensor (the module it ends, and their parents).
    Token activations carry their ``tokens`` grid; ``shape`` and ``layout`` then describe the map
    (N, height, width, C) NHWC they are reshaped to. ``blocked`` names the tensor the network computes on
    where ``tensor`` is only its NCHW copy beside the path to the output (see :func:`blocked_source`).
    """

    tensor: str
    op: str
    shape: tuple[Dim, ...]
    name: Optional[str] = None
    aliases: tuple[str, ...] = ()
    layout: str = "NCHW"
    tokens: Optional[TokenGrid] = None
    blocked: Optional[str] = None

    @property
    def display_name(self) -> str:
        return self.name or self.tensor

    @property
    def spatial_axes(self) -> tuple[int, int]:
        return (1, 2) if self.layout == "NHWC" else (2, 3)

    @property
    def channel_axis(self) -> int:
        return 3 if self.layout == "NHWC" else 1

    def __str__(self) -> str:
        shape = "x".join("?" if d is None else str(d) for d in self.shape)
        named = f" ({self.name})" if self.name and self.name != self.tensor else ""
        return f"{self.tensor}{named}: {self.op} [{shape}] {self.layout}"


def framework_names(view: GraphView, metadata: Metadata) -> dict[str, list[str]]:
    """Tensor name -> framework names, outermost first: from our metadata, else from exporter scopes (tf2onnx
    node names, PyTorch's scopes or node names; see :mod:`.torch_names`)."""
    names: dict[str, list[str]] = {}
    for name, info in metadata.layers.items():
        names.setdefault(info.tensor, []).append(name)
    if is_tf2onnx(view.model):
        for tensor, scopes in tf2onnx_layer_names(view).items():
            names.setdefault(tensor, scopes)
    scopes_of = module_scopes(view.nodes)
    last_node_of: dict[str, int] = {}
    for index, node in enumerate(view.nodes):
        for scope in scopes_of[node.name]:
            last_node_of[scope] = index
    for index, node in enumerate(view.nodes):
        ended = [scope for scope in scopes_of[node.name] if last_node_of[scope] == index]
        if ended and node.output and node.output[0] not in names:
            names[node.output[0]] = ended
    return names


def candidate_layers(view: GraphView, output: str, metadata: Metadata) -> list[Layer]:
    """Float rank-4 tensors with spatial extent (H > 1 and W > 1) on a path from an input to ``output`` (so no
    weight, whether an initializer, a Constant node or a dequantised int8 one), in graph order, laid out NCHW
    or NHWC (from our metadata, else followed from the image input through the graph)."""
    needed = view.ancestors([output]) & view.depends_on(view.input_names)  # activations, not weights
    names = framework_names(view, metadata)
    layouts = tensor_layouts(view, metadata)
    candidates = []
    for node in view.nodes:
        for tensor in node.output:
            if not tensor or tensor not in needed or not view.is_float(tensor):
                continue
            layer = make_layer(view, tensor, names, layouts)
            if layer is not None and layer.layout in ("NCHW", "NHWC") and _has_spatial_extent(layer):
                candidates.append(layer)
    return candidates


def tensor_layouts(view: GraphView, metadata: Metadata) -> dict[str, str]:
    """Layouts of rank-4 tensors: metadata first, then what follows from the inputs' layouts."""
    inputs = {name: metadata.input_layout or guess_input_layout(view.shape(name) or [])
              for name in view.input_names if view.rank(name) == 4}
    layouts = infer_layouts(view, inputs)
    layouts.update({info.tensor: info.layout for info in metadata.layers.values() if info.layout})
    return layouts


def make_layer(view: GraphView, tensor: str, names: dict[str, list[str]], layouts: dict[str, str],
               tokens: Optional[TokenGrid] = None) -> Optional[Layer]:
    shape = view.shape(tensor)
    if shape is None or len(shape) != (3 if tokens else 4):
        return None
    producer = view.producer.get(tensor)
    aliases = names.get(tensor, [])
    layout = layouts.get(tensor, "NCHW")
    if tokens:
        count = shape[1]
        if isinstance(count, int) and count - tokens.skip != tokens.height * tokens.width:
            raise ValueError(f"tensor {tensor!r} has {count} tokens; a {tokens.height}x{tokens.width} grid after "
                             f"skipping {tokens.skip} needs {tokens.height * tokens.width + tokens.skip}")
        shape, layout = [shape[0], tokens.height, tokens.width, shape[2]], "NHWC"
    return Layer(tensor=tensor, op=producer.op_type if producer is not None else "Input", shape=tuple(shape),
                 name=aliases[0] if aliases else None, aliases=tuple(aliases[1:]), layout=layout, tokens=tokens)


def _has_spatial_extent(layer: Layer) -> bool:
    """Both spatial dims exceed 1 (or are unknown): a (N, 1, 1, C) tensor after pooling is no map."""
    return all(not isinstance(layer.shape[a], int) or layer.shape[a] > 1 for a in layer.spatial_axes)


def resolve_layer(view: GraphView, spec: str, output: str, candidates: Sequence[Layer],
                  metadata: Metadata, tokens: Optional[TokenGrid] = None) -> Layer:
    """The layer a user named: 'auto', a framework name, or any float tensor of rank 4 before ``output``
    (rank 3, (N, tokens, C), with a ``tokens`` grid)."""
    if spec == "auto":
        if tokens:
            raise ValueError("token activations need the layer named explicitly (e.g. the last block's norm)")
        return default_layer(view, candidates, output)
    if not tokens:
        for layer in candidates:
            if spec == layer.tensor or spec == layer.name or spec in layer.aliases:
                return layer
    names = framework_names(view, metadata)
    by_name = {alias: tensor for tensor, aliases in names.items() for alias in aliases}
    info = metadata.layers.get(spec)
    tensor = info.tensor if info else by_name.get(spec, spec)
    on_path = view.ancestors([output])
    blocked = None if tensor in on_path else blocked_source(view, tensor)
    if (tensor in on_path or blocked in on_path) and view.is_float(tensor):
        layer = make_layer(view, tensor, names, tensor_layouts(view, metadata), tokens)
        if layer is not None:
            return replace(layer, blocked=blocked)
        wanted = "(N, tokens, C)" if tokens else "rank-4 activation (N, C, H, W) or (N, H, W, C)"
        raise ValueError(f"layer {spec!r} (tensor {tensor!r}) has shape {view.shape(tensor)}; a CAM needs a {wanted}"
                         + ("" if tokens else "; for transformer tokens give a TokenGrid"))
    fused = _fused_into(view, spec, names)
    if fused is not None:
        tensor, kept = fused
        raise UnknownLayerError(f"layer {spec!r} was fused away by the exporter: its op was merged with {kept!r} "
                                f"after it (a BatchNorm folded into its Conv), so only their joint output is in "
                                f"the graph; use {kept!r} (tensor {tensor!r}).")
    if tensor not in on_path and (tensor in view.producer or tensor in view.input_names):
        raise UnknownLayerError(f"layer {spec!r} (tensor {tensor!r}) is not on the path to output {output!r}: the "
                                "output is not computed from it, so its gradient would be zero; name a tensor "
                                "the output is computed from.")
    known = sorted({n for layer in candidates for n in (layer.tensor, layer.name, *layer.aliases) if n}
                   | set(metadata.layers) | set(by_name))
    close = difflib.get_close_matches(spec, known, n=5, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownLayerError(f"no layer named {spec!r} on the path to output {output!r}.{hint}")


def blocked_source(view: GraphView, tensor: str) -> Optional[str]:
    """The blocked tensor ``tensor`` is an NCHW copy of, where ONNX Runtime's ORT_ENABLE_ALL optimiser left
    it as a ``ReorderOutput`` beside the network, which runs on the blocked (NCHWc) tensor: the layer's
    gradient is the blocked tensor's, reordered the same way."""
    producer = view.producer.get(tensor)
    if producer is None or producer.op_type != "ReorderOutput" or producer.domain != NCHWC:
        return None
    return producer.input[0]


class UnknownLayerError(ValueError):
    """A layer name the model does not have; ``str()`` ends by saying where the candidates are listed, which
    :meth:`pointing_at` changes (the command line points at ``onnx-gradcam layers MODEL``)."""

    API_LISTING = "onnx_gradcam.list_layers(model) lists the candidates."

    def __init__(self, problem: str, listing: str = API_LISTING):
        super().__init__(f"{problem} {listing}")
        self.problem = problem

    def pointing_at(self, listing: str) -> "UnknownLayerError":
        return UnknownLayerError(self.problem, listing)


def _fused_into(view: GraphView, module: str, names: dict[str, list[str]]) -> Optional[tuple[str, str]]:
    """(tensor, framework name) of the node whose weight is ``module``'s (``<module>.weight``, under any
    wrapper's prefix) when that node's output carries the name of a sibling module instead: an exporter
    folded ``module`` into the module after it (a Conv into its BatchNorm)."""
    suffix, parent = f"{module}.weight", module.rpartition(".")[0]
    for node in view.nodes:
        if not node.output or not any(name == suffix or name.endswith("." + suffix) for name in node.input[1:]):
            continue
        siblings = [alias for alias in names.get(node.output[0], []) if alias.rpartition(".")[0] == parent]
        if siblings and module not in siblings:
            return node.output[0], siblings[-1]
    return None
