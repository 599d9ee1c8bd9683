"""ONNX Runtime sessions: which providers, chosen once and quietly. No CAM maths here."""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Optional, Sequence, Union

import onnxruntime as ort
from onnx import ModelProto, TensorProto, helper

from .graph.model import set_ir_version

Providers = Union[str, Sequence[str]]

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_QUIET = 3  # ONNX Runtime's logging severity for "errors only"
_SILENT = 4  # fatal only: the CUDA probe's expected failures are not the user's errors


def resolve_providers(providers: Providers = "auto") -> list[str]:
    """``"auto"``: CUDA when a CUDA session really runs here, else the CPU. Otherwise the names given, checked."""
    if providers == "auto":
        return _auto_providers()
    names = [providers] if isinstance(providers, str) else list(providers)
    available = ort.get_available_providers()
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(f"execution provider(s) {unknown} are not available in this onnxruntime build; "
                         f"available: {available}")
    return names


@functools.lru_cache(maxsize=1)
def _auto_providers() -> list[str]:
    return [CUDA, CPU] if CUDA in ort.get_available_providers() and _cuda_works() else [CPU]


def _cuda_works() -> bool:
    """Create a one-node CUDA session with logging silenced: a GPU build on a machine without a GPU falls
    back to the CPU (and would log errors) rather than fail. No driver library means no CUDA, asked first."""
    try:
        ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return False
    if hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001  (missing CUDA libraries simply mean no CUDA)
            return False
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    probe = set_ir_version(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    options = ort.SessionOptions()
    options.log_severity_level = _SILENT
    ort.set_default_logger_severity(_SILENT)
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=[CUDA])
        return session.get_providers()[0] == CUDA
    except Exception:  # noqa: BLE001
        return False
    finally:
        ort.set_default_logger_severity(2)  # ONNX Runtime's default: warnings


def default_options() -> ort.SessionOptions:
    """Full graph optimisation, errors-only logging."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = _QUIET
    return options


FLOAT16_UNSAFE_OPTIMIZERS = ["FuseFp16InitializerToFp32NodeTransformer"]
"""ONNX Runtime 1.31's CPU pass that folds a float16 weight's Cast into a float32 weight crashes the process
(a segmentation fault while the session is made) on a float16 vision transformer from onnxconverter-common
given one more graph output (measured: vit_b_16 with its ``encoder_layer_11.ln_1`` output, in a plain
session too). Sessions over models with float16 weights are made without it; constant folding still turns
those Casts into float32 weights."""


def has_float16_weights(model: ModelProto) -> bool:
    return any(tensor.data_type == TensorProto.FLOAT16 for tensor in model.graph.initializer)


def make_session(model: Union[ModelProto, bytes, str], providers: Providers = "auto",
                 options: Optional[ort.SessionOptions] = None,
                 float16_weights: Optional[bool] = None) -> ort.InferenceSession:
    """An inference session over ``model`` (a proto, serialized bytes or a path) with the resolved providers
    (``options`` default to :func:`default_options`). ``float16_weights``: whether the model has any, where
    ``model`` is not a proto that says so itself."""
    payload = model.SerializeToString() if isinstance(model, ModelProto) else model
    if float16_weights is None:
        float16_weights = isinstance(model, ModelProto) and has_float16_weights(model)
    return ort.InferenceSession(payload, options or default_options(), providers=resolve_providers(providers),
                                disabled_optimizers=FLOAT16_UNSAFE_OPTIMIZERS if float16_weights else None)
