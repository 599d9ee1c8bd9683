"""Saving a model with one weight serialized at a time.

``onnx.save`` serializes the whole model into one bytes object before writing it: for a moment every weight is
held twice (ResNet152's 230 MB, VGG16's 528 MB). Protobuf's wire format lets a message be written in pieces: a
length-delimited field is its tag, its length and its bytes, and a repeated field is its elements one after the
other. So the model is written as the model without its graph, then the graph field: the graph without its
initializers, followed by each initializer serialized on its own. The file is the same model ``onnx.load``
reads back. Before it is written, onnx's checker reads the model's structure with its weights left out.
"""

from __future__ import annotations

import os
import tempfile
from typing import BinaryIO

import onnx
from google.protobuf.message import Message

from .weights import tensor_bytes

MODEL_GRAPH_FIELD = onnx.ModelProto.DESCRIPTOR.fields_by_name["graph"].number
GRAPH_INITIALIZER_FIELD = onnx.GraphProto.DESCRIPTOR.fields_by_name["initializer"].number
LENGTH_DELIMITED = 2
PLACEHOLDER_LOCATION = "weights-not-written"
PROTOBUF_LIMIT = 2**31 - 2**26
"""Past this many bytes of weights (2 GiB less a margin for the graph itself) a model is saved with external
data: protobuf cannot hold 2 GiB."""


def save_streamed(model: onnx.ModelProto, path: str) -> None:
    """Write ``model`` to ``path`` (self-contained, under protobuf's 2 GiB limit) holding at most one weight's
    serialized copy at a time. ``model`` is not changed."""
    shell = _without(model, "graph")
    graph_shell = _without(model.graph, "initializer")
    pieces = [tensor.ByteSize() for tensor in model.graph.initializer]  # one serialization each, freed at once
    graph_length = graph_shell.ByteSize() + sum(
        len(_key(GRAPH_INITIALIZER_FIELD)) + len(_varint(size)) + size for size in pieces)
    with open(path, "wb") as out:
        out.write(shell.SerializeToString())
        _write_header(out, MODEL_GRAPH_FIELD, graph_length)
        out.write(graph_shell.SerializeToString())
        for tensor, size in zip(model.graph.initializer, pieces):
            _write_header(out, GRAPH_INITIALIZER_FIELD, size)
            out.write(tensor.SerializeToString())


def save_model(model: onnx.ModelProto, path: str) -> None:
    """Write ``model`` to ``path`` with no second copy of its weights: one weight at a time, or, past
    protobuf's 2 GiB limit, with the weights as external data in ``path + ".data"``."""
    if weight_bytes(model) > PROTOBUF_LIMIT:
        onnx.save(model, path, save_as_external_data=True, location=os.path.basename(path) + ".data")
    else:
        save_streamed(model, path)


def weight_bytes(model: onnx.ModelProto) -> int:
    """The size of the initializers' data, from their types and shapes. Not ``model.ByteSize()``: under
    protobuf's upb runtime that serializes the whole model to count it (460 MB for Keras ResNet152)."""
    return sum(tensor_bytes(t) for t in model.graph.initializer if t.data_type != onnx.TensorProto.STRING)


def check_structure(model: onnx.ModelProto) -> None:
    """onnx's checker on ``model`` with its weights left out (each initializer a placeholder of its name,
    type and shape), so no copy of them is made: checking the model itself, or its file, holds every weight
    once more (400 MB for Keras ResNet152)."""
    with tempfile.TemporaryDirectory(prefix="onnx-gradcam-check-") as folder:
        open(os.path.join(folder, PLACEHOLDER_LOCATION), "wb").close()  # the checker wants the data file to exist
        path = os.path.join(folder, "model.onnx")
        onnx.save(_without_weights(model), path)
        onnx.checker.check_model(path)


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each initializer a placeholder of its name, type and shape."""
    shell = _without(model, "graph")
    shell.graph.CopyFrom(_without(model.graph, "initializer"))
    for tensor in model.graph.initializer:
        placeholder = shell.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims,
                                                  data_location=onnx.TensorProto.EXTERNAL)
        placeholder.external_data.add(key="location", value=PLACEHOLDER_LOCATION)
    return shell


def _without(message: Message, skipped: str) -> Message:
    """A copy of ``message`` without its field ``skipped`` (the others copied, the skipped one never)."""
    copy = type(message)()
    for field, value in message.ListFields():
        if field.name == skipped:
            continue
        if field.is_repeated:
            getattr(copy, field.name).extend(value)
        elif field.message_type is not None:
            getattr(copy, field.name).CopyFrom(value)
        else:
            setattr(copy, field.name, value)
    return copy


def _write_header(out: BinaryIO, field_number: int, length: int) -> None:
    out.write(_key(field_number) + _varint(length))


def _key(field_number: int) -> bytes:
    return _varint(field_number << 3 | LENGTH_DELIMITED)


def _varint(value: int) -> bytes:
    encoded = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        encoded.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(encoded)
