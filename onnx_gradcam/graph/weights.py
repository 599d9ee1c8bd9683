"""Keeping a model's weights out of its protobuf while the explainer is built and run.

Protobuf copies are the memory cost of graph surgery: shape inference, version conversion and every
model assembled from another copy and serialize all their tensors. So the data of large tensors is moved
into NumPy arrays once; the initializers stay in the graph as external-data placeholders (name, type,
dims), which onnx's tooling reads, and ONNX Runtime is handed the arrays themselves
(``SessionOptions.add_external_initializers``) instead of a serialized copy.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, numpy_helper

LOCATION = "onnx-gradcam-weights-in-memory"
MIN_BYTES = 1024
"""Smaller tensors (shapes, axes, scales) stay inline: shape inference and the rules read their values."""


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


def detach(model: ModelProto, min_bytes: int = MIN_BYTES) -> dict[str, np.ndarray]:
    """Move the data of initializers of ``min_bytes`` or more into arrays; leave placeholders behind."""
    weights = {}
    for tensor in model.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL or _nbytes(tensor) < min_bytes:
            continue
        weights[tensor.name] = numpy_helper.to_array(tensor)
        _make_placeholder(tensor)
    return weights


def attach(model: ModelProto, weights: dict[str, np.ndarray]) -> None:
    """Put the arrays back into their placeholders (to save a self-contained model)."""
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name in weights and _is_placeholder(tensor):
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(weights[tensor.name], tensor.name))


def ort_values(weights: dict[str, np.ndarray], names: Iterable[str]):
    """(names, OrtValues) over the arrays themselves, for ``add_external_initializers``."""
    import onnxruntime as ort

    chosen = [name for name in names if name in weights]
    return chosen, [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(weights[name])) for name in chosen]


def placeholders(model: ModelProto) -> list[str]:
    return [t.name for t in model.graph.initializer if _is_placeholder(t)]


def _nbytes(tensor: TensorProto) -> int:
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
