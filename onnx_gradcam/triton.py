"""Triton Inference Server's model configuration (``config.pbtxt``) for an exported explainer model.

Written as protobuf text by hand, so this package does not need ``tritonclient``; the tests parse it with
Triton's own ``ModelConfig`` message.
"""

from __future__ import annotations

import re

from onnx import ModelProto, TensorProto, ValueInfoProto

TRITON_TYPES = {
    TensorProto.BOOL: "TYPE_BOOL", TensorProto.UINT8: "TYPE_UINT8", TensorProto.UINT16: "TYPE_UINT16",
    TensorProto.UINT32: "TYPE_UINT32", TensorProto.UINT64: "TYPE_UINT64", TensorProto.INT8: "TYPE_INT8",
    TensorProto.INT16: "TYPE_INT16", TensorProto.INT32: "TYPE_INT32", TensorProto.INT64: "TYPE_INT64",
    TensorProto.FLOAT16: "TYPE_FP16", TensorProto.FLOAT: "TYPE_FP32", TensorProto.DOUBLE: "TYPE_FP64",
    TensorProto.STRING: "TYPE_STRING", TensorProto.BFLOAT16: "TYPE_BF16",
}


def model_name(text: str) -> str:
    """A name Triton accepts as a model (and folder) name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text.replace("++", "pp"))


def model_config(model: ModelProto, name: str, max_batch_size: int = 8) -> str:
    """``config.pbtxt`` serving ``model`` with Triton's ONNX Runtime backend.

    With ``max_batch_size`` > 0 every input and output must have a dynamic first (batch) dim: Triton's dims
    leave it out, and requests are batched dynamically. 0 describes the tensors whole, unbatched.
    """
    if max_batch_size < 0:
        raise ValueError(f"max_batch_size must be 0 (no batching) or more, not {max_batch_size}")
    batched = max_batch_size > 0
    tensors = [("input", info) for info in model.graph.input] + [("output", info) for info in model.graph.output]
    lines = [f'name: "{name}"', 'backend: "onnxruntime"', f"max_batch_size: {max_batch_size}"]
    for kind in ("input", "output"):
        entries = [_tensor_entry(info, batched) for tensor_kind, info in tensors if tensor_kind == kind]
        lines.append(f"{kind} [\n" + ",\n".join(entries) + "\n]")
    if batched:
        lines.append("dynamic_batching { }")
    return "\n".join(lines) + "\n"


def _tensor_entry(info: ValueInfoProto, batched: bool) -> str:
    tensor_type = info.type.tensor_type
    if tensor_type.elem_type not in TRITON_TYPES:
        raise ValueError(f"tensor {info.name!r} has element type {tensor_type.elem_type}, which Triton has no type for")
    if not tensor_type.HasField("shape"):
        raise ValueError(f"tensor {info.name!r} has no known rank; Triton needs every tensor's dims")
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor_type.shape.dim]
    reshape = ""
    if batched:
        if not dims or dims[0] != -1:
            raise ValueError(f"tensor {info.name!r} has shape {dims} with no dynamic batch dim first: serve it "
                             "unbatched (max batch size 0), or export a model whose batch dim is dynamic")
        dims = dims[1:]
        if not dims:  # one value per image: Triton wants dims [1], reshaped to the model's [batch]
            dims, reshape = [1], " reshape: { shape: [ ] }"
    return (f'  {{ name: "{info.name}" data_type: {TRITON_TYPES[tensor_type.elem_type]} '
            f"dims: [ {', '.join(map(str, dims))} ]{reshape} }}")
