"""PyTorch -> ONNX with chosen module outputs kept as extra, named graph outputs.

Forward hooks capture each requested module's output while the ``torch.onnx`` (dynamo) exporter traces the
model, and a wrapper returns them after the model's own outputs, so the exporter cannot fuse them away.

Graph outputs, in order:

1. the model's own outputs, flattened depth first: a tensor is ``output``; a tuple or list gives
   ``output_0``, ``output_1``, ...; a dict gives its keys in the dict's order (torchvision's segmentation
   models: ``out``, ``aux``); nested containers join the path with dots (``output_1.0``, ``aux.logits``).
   ``None`` entries are left out (their names are skipped, the others keep theirs);
2. one output per requested layer, named as ``model.named_modules()`` names the module (``backbone.layer4``).

Graph inputs are ``input`` (one tensor), ``input_0``, ``input_1``, ... (a tuple), or the keys of a dict of
keyword inputs. The first axis of every input and output is the dynamic batch axis; with ``dynamic_size``,
so are the axes after the channels (``height`` and ``width`` of an NCHW image).
"""

from __future__ import annotations

import ast
import difflib
import os
import warnings
from typing import Any, Mapping, Optional, Sequence, Union

import onnx
import torch

from onnx_gradcam import metadata

LayerSpec = Union[str, torch.nn.Module]  # a name as model.named_modules() gives it, or the module itself
ExampleInputs = Union[torch.Tensor, Sequence[torch.Tensor], Mapping[str, torch.Tensor]]

TORCH_SCOPES = "pkg.torch.onnx.name_scopes"
# Above this many bytes of parameters and buffers the weights go to a file beside the model. Protobuf caps a
# serialized model at 2 GiB; the margin covers the graph and constants the exporter materialises (and it is
# torch.onnx's own threshold, so the two never disagree).
ONE_FILE_LIMIT = 3 * 2**29


def export(model: torch.nn.Module, example_inputs: ExampleInputs, path: Union[str, os.PathLike],
           layers: Sequence[LayerSpec] = (), output_names: Optional[Sequence[str]] = None,
           input_names: Optional[Sequence[str]] = None, dynamic_batch: bool = True, dynamic_size: bool = False,
           opset: Optional[int] = None, preprocessing: Optional[dict] = None, external_data: Optional[bool] = None
           ) -> onnx.ModelProto:
    """Export ``model`` in eval mode to ``path``, each layer in ``layers`` an extra graph output named after it.

    Args:
        model: the module; its own and its submodules' training flags are put back as they were afterwards.
        example_inputs: a tensor, a tuple of tensors (positional inputs), or a dict of keyword inputs.
        layers: module names as ``model.named_modules()`` gives them (``"layer4"``, ``"features.28"``,
            ``"layer4.1.conv2"``) or the module objects. Each must return one tensor. A module called twice
            gives its last output. The output is the value the module returned: an in-place op applied to it
            later in ``forward`` (``out += identity``) does not change it.
        output_names / input_names: names for the model's own outputs and inputs, overriding the defaults
            (see the module docstring).
        dynamic_batch: make the first axis of every input and output dynamic.
        dynamic_size: make every axis after the first two (height and width of an NCHW image) dynamic too, one
            dimension per axis shared by the inputs, so that one model takes images of any size.
        opset: the ONNX opset (the exporter's default if None).
        preprocessing: optional ``size``, ``mean``, ``std``, ``channel_order`` written into the metadata.
        external_data: store the weights in ``<path>.data`` beside the model; by default only where the
            parameters and buffers exceed ``ONE_FILE_LIMIT`` bytes (a model over 2 GB cannot be one file).

    Returns the written model (external weights, if any, not loaded).
    """
    args, kwargs = _split_inputs(example_inputs)
    named = resolve_modules(model, layers or ())
    flags = {module: module.training for module in model.modules()}
    model.eval()
    wrapper = _WithLayerOutputs(model, named).eval()
    try:
        with torch.no_grad():  # run once eagerly: output structure, and clear errors before tracing
            model_outputs, _ = wrapper.named_outputs(*args, **kwargs)
        model_names = _output_names(model_outputs, output_names)
        in_names = _input_names(args, kwargs, input_names)
        graph_outputs = model_names + [name for name, _ in named]
        _check_unique(graph_outputs, "graph output")
        with warnings.catch_warnings():
            # Inputs sharing the batch dimension make torch.onnx say it keeps one name for it: it does.
            warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
            program = torch.onnx.export(
                wrapper, args, kwargs=kwargs, dynamo=True, external_data=False, verbose=False,
                input_names=in_names, output_names=graph_outputs, opset_version=opset,
                dynamic_shapes=_dynamic_shapes(args, kwargs, dynamic_batch, dynamic_size))
    finally:
        # Exactly as they were, module by module (a model training with frozen BatchNorms stays so); set
        # directly, not through train(), which subclasses may override with side effects.
        for module, training in flags.items():
            module.training = training
    _check_kept_dynamic(program.model.graph, [*args, *kwargs.values()], dynamic_batch, dynamic_size)
    _drop_wrapper_scope(program.model.graph)
    program.model.metadata_props[metadata.KEY] = metadata.Metadata(
        framework="pytorch", framework_version=torch.__version__, input_layout="NCHW",
        layers={name: metadata.LayerInfo(tensor=name) for name, _ in named},  # layouts: followed in the graph
        preprocessing=dict(preprocessing or {})).to_json()
    if external_data is None:
        external_data = weight_bytes(model) > ONE_FILE_LIMIT
    program.save(os.fspath(path), external_data=external_data)
    return onnx.load(os.fspath(path), load_external_data=False)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers (shared tensors counted once)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def resolve_modules(model: torch.nn.Module, layers: Sequence[LayerSpec]) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) for each requested layer; an unknown name fails with the closest valid names."""
    if isinstance(layers, (str, torch.nn.Module)):
        layers = [layers]
    modules = dict(model.named_modules())
    by_identity = {id(module): name for name, module in modules.items()}
    resolved = []
    for layer in layers:
        if isinstance(layer, str):
            if layer not in modules or layer == "":
                close = difflib.get_close_matches(layer, [n for n in modules if n], n=5, cutoff=0.4)
                hint = f"; closest: {', '.join(repr(c) for c in close)}" if close else ""
                raise ValueError(f"the model has no module named {layer!r}{hint} "
                                 "(names as model.named_modules() gives them)")
            name = layer
        elif isinstance(layer, torch.nn.Module) and id(layer) in by_identity:
            name = by_identity[id(layer)]
            if name == "":
                raise ValueError("the model itself is not a layer: its outputs are graph outputs already; "
                                 "name one of its submodules")
        else:
            raise ValueError(f"{type(layer).__name__} object is not a submodule of the model; give a submodule "
                             "or its name as model.named_modules() gives it")
        resolved.append((name, modules[name]))
    _check_unique([name for name, _ in resolved], "layer")
    return resolved


def flatten_outputs(value: Any, path: tuple = ()) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) for each tensor in a model's outputs, depth first (naming in the module docstring)."""
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [(_path_name(path), value)]
    if isinstance(value, Mapping):
        return [item for key, v in value.items() for item in flatten_outputs(v, (*path, str(key)))]
    if isinstance(value, (tuple, list)):
        return [item for i, v in enumerate(value) for item in flatten_outputs(v, (*path, i))]
    raise TypeError(f"model output {_path_name(path)!r} is a {type(value).__name__}; outputs must be tensors, "
                    "or tuples, lists and dicts of tensors")


def _path_name(path: tuple) -> str:
    if not path:
        return "output"
    head = f"output_{path[0]}" if isinstance(path[0], int) else path[0]
    return ".".join([head, *map(str, path[1:])])


def _split_inputs(example_inputs: ExampleInputs) -> tuple[tuple, dict]:
    """Positional and keyword inputs, each checked to be a tensor."""
    if isinstance(example_inputs, torch.Tensor):
        args, kwargs = (example_inputs,), {}
    elif isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        raise TypeError(f"example_inputs is a {type(example_inputs).__name__}; give a tensor, a tuple of "
                        "tensors (positional inputs) or a dict of tensors (keyword inputs)")
    for name, value in [*((f"example_inputs[{i}]", v) for i, v in enumerate(args)),
                        *((f"example_inputs[{k!r}]", v) for k, v in kwargs.items())]:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} is a {type(value).__name__}; every example input must be a tensor")
    return args, kwargs


def _output_names(model_outputs: list[tuple[str, torch.Tensor]], given: Optional[Sequence[str]]) -> list[str]:
    names = [name for name, _ in model_outputs]
    if given is None:
        return names
    if len(given) != len(names):
        raise ValueError(f"{len(given)} output names for the model's {len(names)} outputs {names}")
    return list(given)


def _input_names(args: tuple, kwargs: dict, given: Optional[Sequence[str]]) -> list[str]:
    names = ["input"] if len(args) == 1 and not kwargs else [f"input_{i}" for i in range(len(args))]
    names += list(kwargs)
    if given is None:
        return names
    if len(given) != len(names):
        raise ValueError(f"{len(given)} input names for the model's {len(names)} inputs {names}")
    _check_unique(list(given), "input")
    return list(given)


def _check_unique(names: list[str], what: str) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique; repeated: {repeated}")


def _dynamic_shapes(args: tuple, kwargs: dict, batch: bool, size: bool) -> Optional[dict]:
    """The dynamic axes of every input, keyed as the wrapper's forward(*args, **kwargs): axis 0 (``batch``) and
    the axes after the channels (``size``), each axis one dimension shared by all inputs."""
    dims: dict[str, torch.export.Dim] = {}

    def dim(name: str) -> torch.export.Dim:
        return dims.setdefault(name, torch.export.Dim(name))

    def spec(tensor: torch.Tensor) -> Optional[dict]:
        axes = {axis: dim("batch" if axis == 0 else _SIZE_NAMES.get(axis - tensor.dim(), f"size{axis}"))
                for axis in _dynamic_axes(tensor, batch, size)}
        return axes or None

    if not (batch or size):
        return None
    shapes = {"args": tuple(spec(t) for t in args), "kwargs": {k: spec(t) for k, t in kwargs.items()}}
    return {key: value for key, value in shapes.items() if value}  # torch.export refuses an empty entry


_SIZE_NAMES = {-1: "width", -2: "height", -3: "depth"}
"""Names of the dynamic size axes, counted from the last."""


def _dynamic_axes(tensor: torch.Tensor, batch: bool, size: bool) -> list[int]:
    """The axes of an input asked to be dynamic: 0 for the batch, those after the channels for the size."""
    return ([0] if batch and tensor.dim() else []) + (list(range(2, tensor.dim())) if size else [])


def _check_kept_dynamic(graph, inputs: Sequence[torch.Tensor], batch: bool, size: bool) -> None:
    """A clear error where torch.export made an axis asked to be dynamic static, as it does silently where the
    model's code branches on that size, rather than a model that takes only the example's size."""
    for value, tensor in zip(graph.inputs, inputs):
        fixed = [axis for axis in _dynamic_axes(tensor, batch, size) if isinstance(value.shape[axis], int)]
        if fixed:
            raise ValueError(
                f"torch.export fixed axes {fixed} of input {value.name!r} to the example's sizes "
                f"{[value.shape[axis] for axis in fixed]} instead of keeping them dynamic: the model's code "
                "branches on them (torchvision's swin_t, for one, sets its window shift by comparing the window "
                "with the padded feature map, so no one graph is right at every size); export at each size "
                "needed (dynamic_size=False), or make the branch independent of the size")


def _drop_wrapper_scope(graph) -> None:
    """Module scopes recorded under the wrapper read 'model.layer4'; make them the user's own 'layer4'."""
    prefix = _WithLayerOutputs.MODEL_ATTRIBUTE
    for node in graph.all_nodes():
        value = node.metadata_props.get(TORCH_SCOPES)
        if value is None:
            continue
        scopes = ast.literal_eval(value)
        node.metadata_props[TORCH_SCOPES] = repr(
            [s[len(prefix) + 1:] if s.startswith(prefix + ".") else ("" if s == prefix else s) for s in scopes])


class _WithLayerOutputs(torch.nn.Module):
    """Runs the model and returns its flattened outputs followed by the captured layer outputs."""

    MODEL_ATTRIBUTE = "model"

    def __init__(self, model: torch.nn.Module, named: list[tuple[str, torch.nn.Module]]):
        super().__init__()
        self.model = model
        self.named_layers = named

    def forward(self, *args, **kwargs) -> tuple[torch.Tensor, ...]:
        model_outputs, layer_outputs = self.named_outputs(*args, **kwargs)
        return tuple(tensor for _, tensor in model_outputs + layer_outputs)

    def named_outputs(self, *args, **kwargs):
        """The model's outputs and the layers' outputs, as two lists of (name, tensor)."""
        captured: dict[str, torch.Tensor] = {}
        handles = [module.register_forward_hook(self._capture(captured, name)) for name, module in self.named_layers]
        try:
            model_outputs = flatten_outputs(self.model(*args, **kwargs))
        finally:
            for handle in handles:
                handle.remove()
        missing = [name for name, _ in self.named_layers if name not in captured]
        if missing:
            raise ValueError(f"modules {missing} did not run in the model's forward, so they have no output "
                             "to export; name modules the forward pass calls")
        return model_outputs, [(name, captured[name]) for name, _ in self.named_layers]

    @staticmethod
    def _capture(captured: dict, name: str):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"module {name!r} ({type(module).__name__}) returned {_describe(output)}, not a "
                                "tensor; a layer must return one tensor: name a submodule that does")
            captured[name] = output  # a module called twice keeps its last output, as pytorch-grad-cam does
        return hook


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} ({', '.join(type(v).__name__ for v in value)})"
    if isinstance(value, Mapping):
        return f"a {type(value).__name__} with keys {list(value)}"
    return f"a {type(value).__name__}"
