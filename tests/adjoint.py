"""The adjoint check every gradient rule is held to: <u, VJP(v)> = <JVP(u), v>.

VJP comes from the gradient model this package emits, run in float32 on ONNX Runtime (the production
path). JVP comes from central differences of the *forward* op evaluated in float64 by an independent
oracle (onnx's ReferenceEvaluator unless the test gives another).

Deployed models have symbolic image sizes, so a check can also make its input's spatial dims symbolic and run
the one gradient model emitted for that at several sizes (``check_adjoint(..., sizes=...)``), or at several
feeds of a model declared symbolic (``inputs=[...]``).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnx_gradcam.autodiff import gradient_model

Oracle = Callable[[dict], np.ndarray]
NARROW_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)
"""The float types :func:`to_float64` widens."""


def parse(text: str) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    onnx.checker.check_model(model)
    return model


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model computing in float64: float32, float16 and bfloat16 types, initializers, constants and
    casts widened."""
    wide = onnx.ModelProto()
    wide.CopyFrom(model)
    graph = wide.graph
    del graph.value_info[:]
    for info in (*graph.input, *graph.output):
        if info.type.tensor_type.elem_type in NARROW_FLOATS:
            info.type.tensor_type.elem_type = TensorProto.DOUBLE
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type in NARROW_FLOATS:
            graph.initializer[index].CopyFrom(_widen(tensor))
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR and attribute.t.data_type in NARROW_FLOATS:
                attribute.t.CopyFrom(_widen(attribute.t))
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i in NARROW_FLOATS:
                attribute.i = TensorProto.DOUBLE
    return wide


def _widen(tensor: TensorProto) -> TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)


def check_adjoint(model: Union[str, onnx.ModelProto], wrt: Sequence[str], inputs: Union[dict, list, None] = None,
                  output: Optional[str] = None, rtol: float = 1e-4, eps: float = 1e-6, seed: int = 0,
                  oracle: Optional[Oracle] = None, sizes: Optional[Sequence[Sequence[int]]] = None) -> dict:
    """Check the VJP of ``output`` w.r.t. each graph input in ``wrt``; return the VJPs (of the last feeds checked).

    Graph inputs not in ``inputs`` get standard-normal float32 values. One gradient model is emitted and checked
    on each feed where ``inputs`` is a list of feeds, and at each spatial size in ``sizes``, which makes the
    spatial dims (those after batch and channels) of the inputs in ``wrt`` symbolic.
    """
    if isinstance(model, str):
        model = parse(model)
    if sizes is not None:
        model = with_symbolic_sizes(model, wrt)
    rng = np.random.default_rng(seed)
    output = output or model.graph.output[0].name
    if oracle is None:
        evaluator = ReferenceEvaluator(to_float64(model))
        oracle = lambda f: evaluator.run([output], f)[0]  # noqa: E731
    grads_model = gradient_model(model, wrt, output)
    onnx.checker.check_model(grads_model, full_check=True)
    session = ort.InferenceSession(grads_model.SerializeToString(), providers=["CPUExecutionProvider"])
    for given in inputs if isinstance(inputs, list) else [inputs]:
        for size in sizes or [None]:
            feeds = _feeds(model, given, wrt, size, rng)
            vjps = _check_at(model, session, oracle, wrt, output, feeds, rtol, eps, rng)
    return vjps


def with_symbolic_sizes(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """The model with the spatial dims of inputs ``names`` made symbolic (one name per axis, shared by the
    inputs), and every output's dims left to shape inference."""
    symbolic = onnx.ModelProto()
    symbolic.CopyFrom(model)
    del symbolic.graph.value_info[:]
    for info in symbolic.graph.input:
        if info.name in names:
            for axis, dim in enumerate(info.type.tensor_type.shape.dim):
                if axis >= 2:
                    dim.dim_param = f"size{axis}"
    for info in symbolic.graph.output:
        for dim in info.type.tensor_type.shape.dim:
            dim.Clear()
    return symbolic


DIMS = ["static", "symbolic"]
"""Parameters of a test run at its input's declared sizes and at symbolic ones (:func:`spatial_sizes`)."""


def spatial_sizes(dims: str, shape: Sequence[int]) -> Optional[list[list[int]]]:
    """``check_adjoint``'s ``sizes`` for a test parameterised over :data:`DIMS`, its input declared ``shape``: none
    (static), or the declared spatial size and one larger by 3, 4, 5... per axis, so that strides, ceil mode and
    SAME pads meet other remainders."""
    spatial = list(shape[2:])
    return [spatial, [d + 3 + k for k, d in enumerate(spatial)]] if dims == "symbolic" else None


def _feeds(model: onnx.ModelProto, inputs: Optional[dict], wrt: Sequence[str], size: Optional[Sequence[int]],
           rng: np.random.Generator) -> dict:
    """``inputs``, and standard-normal values for the other graph inputs: at their declared shapes, the inputs
    in ``wrt`` at spatial ``size`` where given."""
    feeds = dict(inputs or {})
    for info in model.graph.input:
        if info.name not in feeds:
            shape = [d.dim_value for d in info.type.tensor_type.shape.dim]
            if size is not None and info.name in wrt:
                shape = shape[:2] + list(size)
            feeds[info.name] = rng.standard_normal(shape).astype(np.float32)
        else:
            assert size is None or info.name not in wrt, f"{info.name!r} is given, so its size cannot vary"
    return feeds


def _check_at(model: onnx.ModelProto, session: ort.InferenceSession, oracle: Oracle, wrt: Sequence[str],
              output: str, feeds: dict, rtol: float, eps: float, rng: np.random.Generator) -> dict:
    """The adjoint identity for each input in ``wrt`` at one set of feeds; the VJPs."""
    wide_feeds = {k: v.astype(np.float64) if v.dtype == np.float32 else v for k, v in feeds.items()}
    y = np.asarray(oracle(wide_feeds))
    v = rng.standard_normal(y.shape)
    vjps = session.run([f"grad/{name}" for name in wrt], {**feeds, "seed": v.astype(np.float32)})
    if output in {o.name for o in model.graph.output}:  # the oracle must compute what the runtime computes
        forward = session.run([output], {**feeds, "seed": v.astype(np.float32)})[0]
        assert forward.shape == y.shape, f"the oracle's output has shape {y.shape}, the runtime's {forward.shape}"
        np.testing.assert_allclose(forward, y, rtol=1e-4, atol=1e-5 * (1 + float(np.max(np.abs(y), initial=0))),
                                   err_msg="the oracle disagrees with ONNX Runtime on the forward output")

    for name, vjp in zip(wrt, vjps):
        x = wide_feeds[name]
        assert vjp.shape == x.shape, f"gradient of {name} has shape {vjp.shape}, expected {x.shape}"
        assert np.all(np.isfinite(vjp)), f"gradient of {name} is not finite"
        assert np.any(vjp != 0), f"gradient of {name} is all zero: the test exercises nothing"
        u = rng.standard_normal(x.shape)
        plus = np.asarray(oracle({**wide_feeds, name: x + eps * u}))
        minus = np.asarray(oracle({**wide_feeds, name: x - eps * u}))
        jvp = (plus - minus) / (2 * eps)
        lhs = float(np.sum(u * vjp.astype(np.float64)))
        rhs = float(np.sum(jvp * v))
        scale = max(float(np.sum(np.abs(u * vjp))), float(np.sum(np.abs(jvp * v))))
        assert abs(lhs - rhs) <= rtol * scale, (
            f"adjoint identity fails for {name}: <u, VJP(v)> = {lhs:.8g}, <JVP(u), v> = {rhs:.8g}, "
            f"relative error {abs(lhs - rhs) / scale:.3g} > {rtol}"
        )
    return dict(zip(wrt, vjps))


def model_text(body: str, inputs: str, outputs: str, opset: int = 20, initializers: str = "") -> str:
    """ONNX text for a one-graph model; ``initializers`` is the text between the graph's inputs and body."""
    init = f"<{initializers}>" if initializers else ""
    return (f'<ir_version: 10, opset_import: ["" : {opset}]>\n'
            f"g ({inputs}) => ({outputs}) {init}\n{{\n{body}\n}}")


def attr_text(attrs: dict) -> str:
    """Node attributes as ONNX text: ``{"strides": [2, 2], "mode": "x"}`` -> ``<strides=[2,2], mode="x">``."""
    def value(v):
        return f'"{v}"' if isinstance(v, str) else str(v).replace(" ", "")
    return "<" + ", ".join(f"{k}={value(v)}" for k, v in attrs.items()) + ">" if attrs else ""


def shape_text(shape) -> str:
    """A shape as ONNX text: ``[2, "N", 3]`` -> ``[2,N,3]``; a rank-0 shape is written as nothing."""
    return "[" + ",".join(map(str, shape)) + "]" if len(shape) else ""
