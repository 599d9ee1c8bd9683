"""Keeping a model's weights out of its protobuf while the explainer is built and run.

Protobuf copies are the memory cost of graph surgery: shape inference, version conversion and every
model assembled from another copy and serialize all their tensors. So the data of large tensors is moved
once into a private file (:class:`DetachedWeights`), laid out as ONNX external data; the initializers stay in
the graph as placeholders (name, type, dims), which onnx's tooling reads. A session is made from a copy of
the model whose placeholders point into that file, which ONNX Runtime maps into memory instead of copying:
no array of ours lives beside ONNX Runtime's weights. Measured on vgg19 (benchmarks/bench_big_models.py):
Grad-CAM peaks at 1.38x plain inference this way, 1.92x with the arrays handed over in memory
(``add_external_initializers``, which ONNX Runtime copies while they stay alive).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, numpy_helper

LOCATION = "onnx-gradcam-weights-in-memory"
MIN_BYTES = 1024
"""Smaller tensors (shapes, axes, scales) stay inline: shape inference and the rules read their values."""
DATA_FILE = "weights.bin"
ALIGNMENT = 4096
"""Each tensor starts on a page boundary, so ONNX Runtime can map it in place."""


def constants_to_initializers(model: ModelProto) -> None:
    """Turn the main graph's tensor-valued ``Constant`` nodes into initializers of the same name (deployed
    models often store weights that way); the computation is unchanged."""
    kept = []
    for node in model.graph.node:
        value = _constant_value(node)
        if value is None:
            kept.append(node)
        else:
            value.name = node.output[0]
            model.graph.initializer.append(value)
    del model.graph.node[:]
    model.graph.node.extend(kept)


def _constant_value(node: onnx.NodeProto):
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    for attribute in node.attribute:
        if attribute.name == "value" and attribute.t.data_location != TensorProto.EXTERNAL:
            copy = TensorProto()
            copy.CopyFrom(attribute.t)
            return copy
    return None


class DetachedWeights:
    """The data of a model's large initializers, in a private file that lives as long as this object.

    ``DetachedWeights(model)`` moves the data of every initializer of ``min_bytes`` or more out of ``model``
    (leaving placeholders); :meth:`session_file` writes a model built over those placeholders as a file ONNX
    Runtime loads its weights from; :meth:`attach` puts them back, for a self-contained copy.
    """

    def __init__(self, model: ModelProto, min_bytes: int = MIN_BYTES):
        self._folder = tempfile.TemporaryDirectory(prefix="onnx-gradcam-weights-")
        self._spans: dict[str, tuple[int, int]] = {}
        self._files = 0
        with open(self._data_path, "wb") as data:
            for tensor in model.graph.initializer:
                if (tensor.data_location == TensorProto.EXTERNAL or tensor.data_type == TensorProto.STRING
                        or tensor_bytes(tensor) < min_bytes):
                    continue
                data.seek(-data.tell() % ALIGNMENT, os.SEEK_CUR)
                payload = tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()
                self._spans[tensor.name] = (data.tell(), len(payload))
                data.write(payload)
                _make_placeholder(tensor)

    @property
    def _data_path(self) -> str:
        return os.path.join(self._folder.name, DATA_FILE)

    def __len__(self) -> int:
        return len(self._spans)

    def session_file(self, model: ModelProto) -> str:
        """A file of ``model`` whose placeholders point into the weights' file (the model is not changed)."""
        linked = ModelProto()
        linked.CopyFrom(model)
        for tensor in linked.graph.initializer:
            if _is_placeholder(tensor) and tensor.name in self._spans:
                offset, length = self._spans[tensor.name]
                del tensor.external_data[:]
                for key, value in (("location", DATA_FILE), ("offset", offset), ("length", length)):
                    tensor.external_data.add(key=key, value=str(value))
        self._files += 1
        path = os.path.join(self._folder.name, f"model_{self._files}.onnx")
        onnx.save(linked, path)
        return path

    def attach(self, model: ModelProto) -> None:
        """Put the data back into ``model``'s placeholders (to save a self-contained model)."""
        with open(self._data_path, "rb") as data:
            for tensor in model.graph.initializer:
                if _is_placeholder(tensor) and tensor.name in self._spans:
                    offset, length = self._spans[tensor.name]
                    data.seek(offset)
                    del tensor.external_data[:]
                    tensor.data_location = TensorProto.DEFAULT
                    tensor.raw_data = data.read(length)


def placeholders(model: ModelProto) -> list[str]:
    return [t.name for t in model.graph.initializer if _is_placeholder(t)]


def tensor_bytes(tensor: TensorProto) -> int:
    """The size of a tensor's data, from its type and shape (its data need not be here)."""
    size = int(np.prod(tensor.dims)) if tensor.dims else 1
    return size * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _make_placeholder(tensor: TensorProto) -> None:
    for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data",
                  "string_data"):
        tensor.ClearField(field)
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    tensor.external_data.add(key="location", value=LOCATION)


def _is_placeholder(tensor: TensorProto) -> bool:
    return tensor.data_location == TensorProto.EXTERNAL and any(
        entry.key == "location" and entry.value == LOCATION for entry in tensor.external_data)
