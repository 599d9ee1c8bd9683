"""Keras 3 (TensorFlow backend) -> ONNX through tf2onnx, with chosen layer outputs kept as extra, named outputs.

How the layer outputs are captured: each requested layer's ``call`` is wrapped *on the instance* so that, while a
``tf.function`` calling the whole model is traced, the wrapper records what the layer returned; the function
returns the model's outputs followed by the recorded tensors, and tf2onnx converts that function. This treats
functional, Sequential and subclassed models alike and reaches layers inside nested models, where building a new
``keras.Model(model.inputs, inner_layer.output)`` fails with "Graph disconnected".

Why the wrapper also passes each recorded output through a marker op: tf2onnx's transpose optimiser moves the
graph to NCHW between convolutions, and left to itself it returns an NHWC layer output as a ``Transpose`` of the
internal NCHW tensor while the rest of the model reads that internal tensor: the layer output would be a side
branch, and the gradient with respect to it would miss every path but the ones tf2onnx happened to route through
it. Every later op reads the marker's output instead, and the marker (``CheckNumerics``, converted into a private
domain the optimisers leave alone, then made an ``Identity``) keeps that tensor, in Keras' NHWC layout, the one
place the rest of the graph is computed from.

How big models stay small: the large weights never enter a TensorFlow graph or tf2onnx. While tracing,
``keras.StatelessScope`` maps each large variable to an input of the function; tf2onnx converts the graph with
those inputs, and afterwards they become the ONNX initializers, with the layout changes tf2onnx put in the graph
for them (kernel transposes, reshapes) computed once. Frozen into the graph instead, every weight was copied into
each GraphDef, graph and tf2onnx structure on the way, and once more per tf2onnx optimiser pass: Keras VGG16 (528
MB of weights) passed 18 GB; now its conversion peaks about 3x its weights above the built model
(benchmarks/bench_big_models.py). The checker reads the model's structure without its weights and the file is
written one weight at a time (:mod:`onnx_gradcam.graph.saving`), so neither holds another copy of them; a model
past protobuf's 2 GiB limit is written with external data.

Two conversions tf2onnx lacks are supplied: functions Keras compiles with XLA (grouped convolutions on the CPU,
ConvNeXt's depthwise ones) are inlined like any other, and ``Erfc`` (in TensorFlow's exact GELU) becomes
``1 - Erf``.
"""

from __future__ import annotations

import difflib
import os
from collections import Counter
from typing import Any, Optional, Sequence, Union

import keras
import numpy as np
import onnx
import tensorflow as tf
import tf2onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from onnx_gradcam import metadata

from onnx_gradcam.graph.saving import check_structure, save_model

MARKER_OP = "CheckNumerics"
MARKER_DOMAIN = "onnx_gradcam.layer_marker"
MARKER_MESSAGE = "onnx_gradcam layer output"
BY_REFERENCE_BYTES = 2**16
"""Variables this large are kept out of TensorFlow's graphs and tf2onnx (see ``_Weights``); smaller ones
(batch-norm statistics, biases, scales) are frozen into the graph, where grappler and tf2onnx fold them."""
WEIGHT_PREFIX = "onnx_gradcam_weight_"
NO_INLINING_MARKS = ("_XlaMustCompile", "_noinline")

LayerSpec = Union[str, Any]  # a path "outer/inner" of layer names, or the layer object itself
Shape = Sequence[Optional[int]]


def export(model, path: Union[str, os.PathLike], layers: Sequence[LayerSpec] = (),
           preprocessing: Optional[dict] = None, opset: int = 18,
           input_shapes: Union[Shape, Sequence[Shape], None] = None) -> onnx.ModelProto:
    """Export ``model`` to ``path`` with each layer in ``layers`` as an extra graph output named after its path,
    and the project's metadata. Returns the written model.

    ``layers``: layer names, paths into nested models (``"resnet50/conv5_block3_out"``) or layer objects. A
    layer called more than once (shared) gives its last output. ``input_shapes``: per input, the shape without the
    batch axis, e.g. ``[(224, 224, 3)]``; needed only for a subclassed model that was never called or built.
    The batch axis is dynamic; the model runs in inference mode (``training=False``).
    """
    named = resolve_layers(model, layers)
    inputs = _input_signature(model, input_shapes)
    weights = _Weights(model)
    traced = _Traced(model, inputs, named, weights)
    output_names = _output_names(model, traced.output_paths)
    # Each returned tensor is named after the model output it is, else after the first layer path it is.
    names = output_names + [None] * (traced.n_returned - traced.n_outputs)
    for (layer_path, _), source in zip(named, traced.sources):
        names[source] = names[source] or layer_path
    converted = _convert(traced.concrete, [spec.name for spec in inputs], names, opset, weights)
    reached = _ancestors(converted.graph, output_names)
    unused = [name for name in names[traced.n_outputs:] if name not in reached]
    if unused:
        raise ValueError(f"the model's outputs do not depend on layer(s) {unused}: their gradients would be zero")
    layer_tensors = {layer_path: names[source] for (layer_path, _), source in zip(named, traced.sources)}
    for layer_path, tensor in layer_tensors.items():
        if layer_path != tensor:  # a second name for a tensor already returned: an Identity output of its own
            _add_alias_output(converted.graph, tensor, layer_path)
    metadata.write(converted, metadata.Metadata(
        framework="keras", framework_version=keras.__version__,
        input_layout=_layout() if any(len(spec.shape) == 4 for spec in inputs) else None,
        layers={name: metadata.LayerInfo(tensor=layer_tensors[name], layout=_layout(layer)) for name, layer in named},
        preprocessing=dict(preprocessing or {})))
    _save_checked(converted, os.fspath(path))
    return converted


def _save_checked(model: onnx.ModelProto, path: str) -> None:
    """Check ``model`` with onnx's checker, then write it to ``path``: a model the checker rejects is never
    written.

    Both without another copy of the weights (see :mod:`onnx_gradcam.graph.saving`): the checker reads the
    structure with the weights left out, and the file is written one weight at a time; a model past protobuf's
    2 GiB limit is written with its weights as external data in ``path + ".data"``.
    """
    check_structure(model)
    save_model(model, path)


# --- naming layers -----------------------------------------------------------------------------------------------
def layer_paths(model) -> dict[str, Any]:
    """Every layer reachable from ``model`` by path, nested models' layers as ``"outer/inner"``, in model order.

    Input layers are left out: they compute nothing a CAM could be taken at.
    """
    paths: dict[str, Any] = {}

    def visit(parent, prefix: str) -> None:
        for child in _children(parent):
            if isinstance(child, keras.layers.InputLayer):
                continue
            path = prefix + child.name
            paths.setdefault(path, child)
            visit(child, path + "/")

    visit(model, "")
    return paths


def _children(layer) -> list:
    """A model's layers (``Model.layers``), or the sublayers a custom layer tracks."""
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    return list(getattr(layer, "_layers", []))


def resolve_layers(model, layers: Sequence[LayerSpec]) -> list[tuple[str, Any]]:
    """(path, layer) for each requested layer; an unknown name fails with the closest valid paths."""
    paths = layer_paths(model)
    path_of = {}
    for path, layer in paths.items():
        path_of.setdefault(id(layer), path)
    resolved = []
    for spec in layers:
        if isinstance(spec, str):
            if spec not in paths:
                close = difflib.get_close_matches(spec, list(paths), n=5, cutoff=0.5)
                if not close:  # a bare inner name ("conv5_block3_out") is closest to the paths ending in it
                    close = [p for p in paths if p.rsplit("/", 1)[-1] == spec.rsplit("/", 1)[-1]][:5]
                hint = f"; closest: {', '.join(repr(c) for c in close)}" if close else ""
                raise ValueError(f"model {model.name!r} has no layer {spec!r}{hint}. Layers inside nested models are "
                                 "named by path, 'outer/inner'; converters.keras.layer_paths(model) lists them all")
            resolved.append((spec, paths[spec]))
        elif id(spec) in path_of:
            resolved.append((path_of[id(spec)], spec))
        else:
            raise ValueError(f"{type(spec).__name__} {getattr(spec, 'name', '')!r} is not a layer of model "
                             f"{model.name!r}")
    return resolved


def _layout(layer=None) -> str:
    """Where channels sit: the layer's own ``data_format`` where it has one, else Keras' image data format."""
    data_format = getattr(layer, "data_format", None) or keras.config.image_data_format()
    return "NCHW" if data_format == "channels_first" else "NHWC"


# --- inputs and outputs ------------------------------------------------------------------------------------------
def _input_signature(model, input_shapes) -> list[tf.TensorSpec]:
    """One ``tf.TensorSpec`` per model input, batch axis ``None``, named after the Keras input.

    Functional and Sequential models know their inputs. A subclassed model knows only what it was built or called
    with; one that was never called has no input shape in Keras 3, so it is built here from ``input_shapes``.
    """
    keras_inputs = _keras_inputs(model)
    if keras_inputs is not None:
        return [tf.TensorSpec((None, *t.shape[1:]), t.dtype, name=_input_name(t, i, len(keras_inputs)))
                for i, t in enumerate(keras_inputs)]
    if input_shapes is not None:
        shapes = [tuple(input_shapes)] if all(isinstance(d, int) or d is None for d in input_shapes) \
            else [tuple(s) for s in input_shapes]
    else:
        config = model.get_build_config() if model.built else None
        if not config or "input_shape" not in config:
            raise ValueError(
                f"model {model.name!r} has never been called, so Keras does not know its input shape: call it on a "
                "batch first (model(x)), or pass input_shapes=[(height, width, channels)] (one shape per input, "
                "without the batch axis)")
        shapes = [tuple(config["input_shape"])[1:]]
    if any(d is None for s in shapes for d in s):
        raise ValueError(f"input_shapes {shapes} must give every axis but the batch axis")
    dtype = keras.config.floatx()
    example = [np.zeros((1, *s), dtype=dtype) for s in shapes]
    model(example[0] if len(example) == 1 else example, training=False)  # creates any variables not built yet
    return [tf.TensorSpec((None, *s), dtype, name="input" if len(shapes) == 1 else f"input_{i}")
            for i, s in enumerate(shapes)]


def _keras_inputs(model) -> Optional[list]:
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return list(inputs) if inputs else None


def _input_name(tensor, index: int, count: int) -> str:
    """The input layer's name ("image"); Keras names unnamed inputs' tensors "keras_tensor_N", which says nothing."""
    history = getattr(tensor, "_keras_history", None)
    name = getattr(getattr(history, "operation", None), "name", None) or tensor.name
    if name.startswith("keras_tensor"):
        return "input" if count == 1 else f"input_{index}"
    return name


def _output_names(model, paths: list[tuple]) -> list[str]:
    """Dict outputs are named by their keys; a functional model's outputs after its output layers; any other
    model's "output" or "output_i". ``paths``: each flattened output's path in the output structure."""
    count = len(paths)
    if all(len(path) == 1 and isinstance(path[0], str) for path in paths):
        return [path[0] for path in paths]
    names = list(getattr(model, "output_names", None) or [])
    if len(names) == count and len(set(names)) == count and not any(n.startswith("keras_tensor") for n in names):
        return names
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


# --- tracing -----------------------------------------------------------------------------------------------------
class _Traced:
    """A ``tf.function`` returning the model's outputs, then each distinct recorded layer output.

    ``sources[i]`` is the index, among the returned tensors, of the i-th requested layer's output: a layer asked
    for twice, or one whose output *is* a model output or another layer's, is returned only once.
    """

    def __init__(self, model, inputs: list[tf.TensorSpec], named: list[tuple[str, Any]], weights: "_Weights"):
        self.model = model
        self.n_inputs = len(inputs)
        self.named = named
        self.weights = weights
        self.n_outputs = 0
        self.output_paths: list[tuple] = []
        self.n_returned = 0
        self.sources: list[int] = []
        # Traced here, so that errors about layers surface before tf2onnx runs.
        self.concrete = tf.function(self._run).get_concrete_function(*inputs, *weights.specs)

    def _run(self, *arguments):
        inputs, values = arguments[:self.n_inputs], arguments[self.n_inputs:]
        recorded: dict[int, Any] = {}
        with _recording([layer for _, layer in self.named], recorded), \
                keras.StatelessScope(state_mapping=list(zip(self.weights.variables, values))):
            outputs = self.model(inputs[0] if self.n_inputs == 1 else list(inputs), training=False)
        flat = keras.tree.flatten_with_path(outputs)
        self.output_paths = [path for path, _ in flat]
        returned = [tf.convert_to_tensor(t) for _, t in flat]
        self.n_outputs = len(returned)
        self.sources = []
        for path, layer in self.named:
            if id(layer) not in recorded:
                raise ValueError(f"layer {path!r} was not called when the model ran: it is no part of its forward "
                                 "pass")
            value = recorded[id(layer)]
            if not tf.is_tensor(value):
                raise ValueError(f"layer {path!r} returns {type(value).__name__}, not one tensor; name a layer "
                                 "with a single output")
            same = next((k for k, t in enumerate(returned) if t is value), None)
            if same is None:
                returned.append(value)
                same = len(returned) - 1
            self.sources.append(same)
        self.n_returned = len(returned)
        return returned


class _recording:
    """Wraps each layer's ``call`` on the instance to record its output by ``id(layer)``; restores it on exit."""

    def __init__(self, layers: list, recorded: dict):
        self.layers = list({id(layer): layer for layer in layers}.values())
        self.recorded = recorded
        self.saved: list[tuple[Any, bool, Any]] = []

    def __enter__(self):
        for layer in self.layers:
            own = "call" in layer.__dict__
            self.saved.append((layer, own, layer.__dict__.get("call")))
            original = layer.call

            def call(*args, _original=original, _key=id(layer), **kwargs):
                output = _mark(_original(*args, **kwargs))
                self.recorded[_key] = output  # last call wins, as with hooks on a shared layer
                return output

            layer.__dict__["call"] = call  # past Keras' __setattr__ tracking: a plain instance attribute
        return self

    def __exit__(self, *exc):
        for layer, own, previous in self.saved:
            if own:
                layer.__dict__["call"] = previous
            else:
                layer.__dict__.pop("call", None)
        return False


# --- conversion ----------------------------------------------------------------------------------------------------
class _Weights:
    """The model's large variables (``BY_REFERENCE_BYTES`` or more), kept out of TensorFlow's graphs and out of
    tf2onnx: traced as inputs of the function, converted as graph inputs, made initializers afterwards.

    Why: frozen into the graph, each weight is copied into the frozen GraphDef, the function rebuilt from it, the
    graphs tf2onnx imports, freezes and optimises, its table of constant values, its nodes, and, under protobuf's
    upb runtime, once more per optimiser pass (a cleared field's memory stays in its message's arena); Keras VGG16
    (528 MB of weights) passed 18 GB. ``keras.StatelessScope`` maps each variable to its input while tracing.
    """

    def __init__(self, model):
        unique = {id(v): v for v in model.variables}.values()
        self.variables = [v for v in unique
                          if tf.as_dtype(v.dtype).size * int(np.prod(v.shape)) >= BY_REFERENCE_BYTES]
        self.specs = [tf.TensorSpec(v.shape, v.dtype, name=f"{WEIGHT_PREFIX}{i}")
                      for i, v in enumerate(self.variables)]
        self.names = _unique([v.path for v in self.variables])
        """Each weight's name in the ONNX graph: the variable's path ("block1_conv1/kernel")."""

    def value(self, name: str) -> np.ndarray:
        """The weight's value: on the CPU, a view of the variable's own buffer, not a copy."""
        return self.variables[self.names.index(name)].value.numpy()


def _unique(names: list[str]) -> list[str]:
    """``names`` with any repeated one given a suffix ("dense/kernel", "dense/kernel_1")."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append(name if not count else f"{name}_{count}")
    return unique


def _convert(concrete, input_names: list[str], output_names: list[str], opset: int,
             weights: _Weights) -> onnx.ModelProto:
    """The traced function as ONNX, with the given input and output names.

    Frozen here rather than by ``tf2onnx.convert.from_function``, which lists every captured tensor of the
    function as a graph input: constants a layer holds as tensors (the mean and variance of EfficientNet's
    ``Normalization`` layer) would become inputs the caller must feed. Freezing turns them into constants. The
    large weights are inputs of the function (see ``_Weights``); they leave tf2onnx as graph inputs and become
    initializers here.
    """
    frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False, aggressive_inlining=True)
    tf_inputs = [t.name for t in frozen.inputs]
    tf_outputs = [t.name for t in frozen.outputs]
    if len(tf_inputs) != len(input_names) + len(weights.names) or len(tf_outputs) != len(output_names):
        raise RuntimeError(f"the frozen function has inputs {tf_inputs} and outputs {tf_outputs}; expected "
                           f"{len(input_names)} inputs, {len(weights.names)} weights and {len(output_names)} "
                           "outputs")
    taken = input_names + output_names + weights.names
    twice = sorted({name for name in taken if taken.count(name) > 1})
    if twice:
        raise ValueError(f"cannot name graph tensors {twice}: each name is wanted twice (a layer path equal to a "
                         "model input or output name, or to a weight's path)")
    graph_def = frozen.graph.as_graph_def(add_shapes=True)
    _allow_inlining(graph_def)
    converted, _ = tf2onnx.convert.from_graph_def(
        graph_def, input_names=tf_inputs, output_names=tf_outputs, opset=opset,
        custom_ops={MARKER_OP: MARKER_DOMAIN}, extra_opset=[helper.make_opsetid(MARKER_DOMAIN, 1)],
        custom_op_handlers={"Erfc": (_erfc_as_one_minus_erf, [])},
        tensors_to_rename=dict(zip(tf_inputs, input_names + weights.names)) | dict(zip(tf_outputs, output_names)))
    _unmark(converted)
    _weights_to_initializers(converted, weights)
    return converted


def _weights_to_initializers(model: onnx.ModelProto, weights: _Weights) -> None:
    """The weights' graph inputs become initializers holding the variables' values.

    tf2onnx, given a kernel it cannot see, computes its layout in the graph (a ``Transpose`` from Keras' HWIO to
    ONNX's OIHW, a ``Reshape`` for depthwise kernels). Every node that computes from weights and initializers
    alone is computed here instead, by onnx's reference implementation in the weight's own dtype, so the graph
    reads each kernel in the layout it needs, as after tf2onnx's own constant folding. Each value is dropped as
    soon as its last such node has read it and its initializer (if the graph still reads it) holds it.
    """
    graph = model.graph
    constant = {t.name for t in graph.initializer} | set(weights.names)
    derived = set(weights.names)  # computed from a weight: what is folded here
    folded = []
    for index, node in enumerate(graph.node):
        inputs = [name for name in node.input if name]
        if node.domain in ("", "ai.onnx") and inputs and set(inputs) <= constant and derived.intersection(inputs):
            folded.append(index)
            constant.update(node.output)
            derived.update(node.output)
    kept = [node for index, node in enumerate(graph.node) if index not in set(folded)]
    read = {name for node in kept for name in node.input} | {output.name for output in graph.output}
    uses = Counter(name for index in folded for name in graph.node[index].input if name)
    inline = {t.name: t for t in graph.initializer}
    values: dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray:
        if name not in values:
            values[name] = weights.value(name) if name in weights.names else numpy_helper.to_array(inline[name])
        return values[name]

    def done(name: str) -> None:
        if name in derived and name in read:
            _add_initializer(graph, name, value(name))
        values.pop(name, None)

    nodes = list(graph.node)
    for index in folded:
        node = nodes[index]
        inputs = [name for name in node.input if name]
        values.update(zip(node.output, ReferenceEvaluator(node).run(None, {name: value(name) for name in inputs})))
        uses.subtract(inputs)
        for name in {*inputs, *node.output}:
            if uses[name] <= 0 and name in values:
                done(name)
    for name in weights.names:
        if name not in uses:  # read by the graph as it is (a Dense kernel)
            done(name)
    del graph.node[:]
    graph.node.extend(kept)
    inputs = [i for i in graph.input if i.name not in derived]
    del graph.input[:]
    graph.input.extend(inputs)


def _add_initializer(graph: onnx.GraphProto, name: str, array: np.ndarray) -> None:
    """``array`` as an initializer of ``graph``, its bytes copied once into the graph (``numpy_helper.from_array``
    and ``append`` would hold two more copies at once: of VGG16's 411 MB ``fc1`` kernel, 800 MB)."""
    tensor = graph.initializer.add()
    tensor.name = name
    tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    tensor.dims.extend(array.shape)
    tensor.raw_data = numpy_helper.tobytes_little_endian(array)


def _allow_inlining(graph_def) -> None:
    """Let grappler inline the functions Keras compiles with XLA.

    Keras runs grouped convolutions on the CPU (ConvNeXt's depthwise ``Conv2D(groups=channels)``) through a
    ``tf.function(jit_compile=True)``; the call is a ``StatefulPartitionedCall`` of a function marked
    ``_XlaMustCompile`` and ``_noinline``, which grappler leaves alone and tf2onnx does not convert ("No Op
    registered for StatefulPartitionedCall"). Without the marks it is inlined like any other function.
    """
    nodes = list(graph_def.node) + [node for function in graph_def.library.function for node in function.node_def]
    for attrs in [node.attr for node in nodes] + [function.attr for function in graph_def.library.function]:
        for mark in NO_INLINING_MARKS:
            if mark in attrs:
                del attrs[mark]


def _erfc_as_one_minus_erf(ctx, node, name, args) -> None:
    """tf2onnx handler: ``Erfc(x)`` as ``1 - Erf(x)``.

    TensorFlow's exact GELU (Keras' ``"gelu"``, ConvNeXt's) is ``0.5 x erfc(-x / sqrt 2)``, and tf2onnx has no
    conversion for ``Erfc``. The difference is float32's rounding of ``1 - erf``: about 1e-7 absolute.
    """
    node.type = "Erf"
    dtype = tf2onnx.utils.map_onnx_to_numpy_type(ctx.get_dtype(node.input[0]))
    one = ctx.make_const(tf2onnx.utils.make_name(f"{name}/one"), np.array(1, dtype))
    complement = ctx.insert_new_node_on_output("Sub", node.output[0], inputs=[one.output[0], node.output[0]])
    ctx.copy_shape(node.output[0], complement.output[0])
    ctx.set_dtype(complement.output[0], ctx.get_dtype(node.output[0]))


def _mark(output):
    """The layer's output passed through a marker op, which every later op then reads."""
    if tf.is_tensor(output) and output.dtype.is_floating:
        return tf.raw_ops.CheckNumerics(tensor=output, message=MARKER_MESSAGE)
    return output


def _unmark(model: onnx.ModelProto) -> None:
    """The markers become plain Identity nodes, and their domain leaves the model."""
    for node in model.graph.node:
        if node.domain == MARKER_DOMAIN:
            node.domain = ""
            node.op_type = "Identity"
            del node.attribute[:]
    kept = [entry for entry in model.opset_import if entry.domain != MARKER_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _add_alias_output(graph: onnx.GraphProto, tensor: str, alias: str) -> None:
    """A second graph output ``alias`` with the values of graph output ``tensor`` (one layer, two names)."""
    graph.node.append(helper.make_node("Identity", [tensor], [alias], name=f"{alias}/alias"))
    info = graph.output.add()
    info.CopyFrom(next(o for o in graph.output if o.name == tensor))
    info.name = alias


def _ancestors(graph: onnx.GraphProto, targets: Sequence[str]) -> set[str]:
    needed = set(targets)
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            needed.update(name for name in node.input if name)
    return needed
