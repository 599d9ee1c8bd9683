"""Loading a model and bringing it to the one form the rest of the package works on.

The form: a private copy (the user's model is never touched), default-domain opset from ``MIN_OPSET``
to ``MAX_OPSET`` (onnx's version converter moves it up or down), every node named, shapes inferred.
"""

from __future__ import annotations

import os
from typing import Union

import onnx
from google.protobuf.message import DecodeError
from onnx import ModelProto, helper, shape_inference, version_converter

from .weights import LOCATION as IN_MEMORY

MIN_OPSET = 18
"""Models older than this are converted up: from opset 18 on, every reduction takes its axes as an input."""

MAX_OPSET = 26
"""The newest default-domain opset ONNX Runtime 1.31 runs: newer models are converted down to it."""

MAX_IR_VERSION = 10
"""ONNX Runtime 1.31 reads IR versions up to 13; 10 covers every opset this package emits."""

ModelLike = Union[str, os.PathLike, bytes, ModelProto]


def load_model(model: ModelLike) -> ModelProto:
    """Return a private copy of ``model`` (a path, serialized bytes or a ``ModelProto``), external data included."""
    if isinstance(model, ModelProto):
        _check_weights_loaded(model)
        copy = ModelProto()
        copy.CopyFrom(model)
        return copy
    if isinstance(model, (bytes, bytearray)):
        return _parsed(lambda: onnx.load_from_string(bytes(model)), "the model bytes")
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no ONNX model at {path!r}")
        if os.path.getsize(path) == 0:
            raise ValueError(f"the model file {path!r} is empty (0 bytes): not an ONNX model")
        return _parsed(lambda: onnx.load(path, load_external_data=True), f"the model file {path!r}")
    raise TypeError(
        f"expected a path, bytes or onnx.ModelProto for the model, got {type(model).__name__}"
    )


def _parsed(load, what: str) -> ModelProto:
    """``load()``'s model, or one line naming ``what`` when it is no ONNX model (truncated, text, a picture):
    protobuf's own error is many lines and names no file."""
    try:
        model = load()
    except (DecodeError, RuntimeError, UnicodeDecodeError) as error:
        raise ValueError(f"{what} is not a readable ONNX model (truncated or another kind of file?): "
                         f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
    if not model.opset_import or not model.graph.output:
        missing = "opset import" if not model.opset_import else "graph output"
        raise ValueError(f"{what} is not an ONNX model: it has no {missing}")
    return model


def _check_weights_loaded(model: ModelProto) -> None:
    """A ``ModelProto`` loaded without its external data has placeholders where weights belong."""
    for tensor in model.graph.initializer:
        location = {entry.key: entry.value for entry in tensor.external_data}.get("location")
        if tensor.data_location == onnx.TensorProto.EXTERNAL and location != IN_MEMORY:
            raise ValueError(f"weight {tensor.name!r} is stored outside the model (external data in {location!r}) "
                             "and was not loaded: pass the model's path instead, or load it with "
                             "onnx.load(path, load_external_data=True)")


def default_opset(model: ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise ValueError("the model imports no default-domain (ai.onnx) opset")


def normalize(model: ModelProto) -> ModelProto:
    """Bring ``model`` (already a private copy) to the supported opset range, name its nodes, infer shapes."""
    opset = default_opset(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        model = version_converter.convert_version(model, min(max(opset, MIN_OPSET), MAX_OPSET))
    _name_nodes(model.graph)
    model = shape_inference.infer_shapes(model, data_prop=True)
    return model


def set_ir_version(model: ModelProto) -> ModelProto:
    """Give a model this package built an IR version that both onnx.checker and ONNX Runtime accept.

    Domains onnx does not know (``com.microsoft``, ``com.ms.internal.nhwc``, which ONNX Runtime's optimiser
    and quantisation tools import) set no minimum: onnx would otherwise refuse them outright."""
    needed = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    model.ir_version = max(needed, min(model.ir_version or MAX_IR_VERSION, MAX_IR_VERSION))
    return model


def _name_nodes(graph: onnx.GraphProto) -> None:
    taken = {node.name for node in graph.node if node.name}
    for index, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
