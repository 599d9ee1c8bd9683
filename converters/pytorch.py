"""PyTorch -> ONNX with chosen module outputs kept as extra, named graph outputs.

Forward hooks capture each requested module's output during export (hooks survive the dynamo exporter),
and a wrapper returns them after the model's own outputs, so the exporter cannot fuse them away.
"""

from __future__ import annotations

import ast
import difflib
import os
from typing import Any, Optional, Sequence, Union

import onnx
import torch

from onnx_gradcam import metadata

LayerSpec = Union[str, Any]  # a name as model.named_modules() gives it, or the module itself


def export(model, example_inputs, path: Union[str, os.PathLike], layers: Sequence[LayerSpec] = (),
           output_names: Optional[Sequence[str]] = None, input_names: Optional[Sequence[str]] = None,
           dynamic_batch: bool = True, opset: Optional[int] = None,
           preprocessing: Optional[dict] = None) -> onnx.ModelProto:
    """Export ``model`` (in eval mode) to ``path`` with each layer in ``layers`` as an extra graph output named
    after the layer, and the project's metadata. Returns the written model.

    ``example_inputs``: a tensor or a tuple of tensors. ``layers``: module names (``"layer4"``,
    ``"features.28"``) or module objects.
    """
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    named = resolve_modules(model, layers)
    was_training = model.training
    model.eval()
    wrapper = _WithLayerOutputs(model, named)
    wrapper.eval()
    try:
        with torch.no_grad():
            flat_outputs = wrapper(*inputs)
        n_model_outputs = len(flat_outputs) - len(named)
        out_names = list(output_names or ([f"output_{i}" for i in range(n_model_outputs)] if n_model_outputs > 1
                                          else ["output"]))
        if len(out_names) != n_model_outputs:
            raise ValueError(f"{len(out_names)} output names for {n_model_outputs} model outputs")
        in_names = list(input_names or ([f"input_{i}" for i in range(len(inputs))] if len(inputs) > 1 else ["input"]))
        batch = torch.export.Dim("batch")
        dynamic = (tuple({0: batch} for _ in inputs),) if dynamic_batch else None  # forward(*inputs)
        program = torch.onnx.export(wrapper, inputs, dynamo=True, external_data=False, verbose=False,
                                    input_names=in_names, output_names=out_names + [name for name, _ in named],
                                    dynamic_shapes=dynamic, opset_version=opset)
    finally:
        model.train(was_training)
    exported = program.model_proto
    _drop_wrapper_scope(exported)
    metadata.write(exported, metadata.Metadata(
        framework="pytorch", framework_version=torch.__version__, input_layout="NCHW",
        layers={name: metadata.LayerInfo(tensor=name, layout="NCHW") for name, _ in named},
        preprocessing=dict(preprocessing or {})))
    onnx.save(exported, os.fspath(path))
    return exported


def _drop_wrapper_scope(model: onnx.ModelProto) -> None:
    """Module scopes recorded under the wrapper read 'model.layer4'; make them the user's own 'layer4'."""
    prefix = _WithLayerOutputs.MODEL_ATTRIBUTE
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                scopes = ast.literal_eval(prop.value)
                prop.value = repr([s[len(prefix) + 1:] if s.startswith(prefix + ".") else ("" if s == prefix else s)
                                   for s in scopes])


def resolve_modules(model, layers: Sequence[LayerSpec]) -> list[tuple[str, Any]]:
    """(name, module) for each requested layer; an unknown name fails with the closest valid names."""
    modules = dict(model.named_modules())
    by_identity = {id(module): name for name, module in modules.items()}
    resolved = []
    for layer in layers:
        if isinstance(layer, str):
            if layer not in modules or layer == "":
                close = difflib.get_close_matches(layer, [n for n in modules if n], n=5, cutoff=0.4)
                hint = f"; closest: {', '.join(repr(c) for c in close)}" if close else ""
                raise ValueError(f"the model has no module named {layer!r}{hint}")
            resolved.append((layer, modules[layer]))
        elif id(layer) in by_identity:
            resolved.append((by_identity[id(layer)], layer))
        else:
            raise ValueError(f"{type(layer).__name__} object is not a submodule of the model")
    return resolved


def _flatten(value) -> list:
    """Model outputs as a flat list of tensors: tuples, lists and dicts (in key order) are unpacked."""
    if isinstance(value, dict):
        return [t for key in value for t in _flatten(value[key])]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _flatten(item)]
    return [value]


class _WithLayerOutputs(torch.nn.Module):
    """Runs the model and returns its flattened outputs followed by the captured layer outputs."""

    MODEL_ATTRIBUTE = "model"

    def __init__(self, model, named: list[tuple[str, Any]]):
        super().__init__()
        self.model = model
        self.layer_modules = [module for _, module in named]

    def forward(self, *inputs):
        captured: dict[int, Any] = {}
        handles = [module.register_forward_hook(self._capture(captured, index))
                   for index, module in enumerate(self.layer_modules)]
        try:
            outputs = _flatten(self.model(*inputs))
        finally:
            for handle in handles:
                handle.remove()
        return tuple(outputs) + tuple(captured[i] for i in range(len(self.layer_modules)))

    @staticmethod
    def _capture(captured: dict, index: int):
        def hook(module, args, output):
            captured[index] = output  # a module called twice keeps its last output, as pytorch-grad-cam does
        return hook
