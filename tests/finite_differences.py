"""The float64 finite-difference oracle for a whole model's head: d sum(seed * output) / d layer along a few
directions, by central differences of onnx's ReferenceEvaluator on a float64 copy of the head.

The directions are our gradient reweighted elementwise at random (u = g * w, w uniform in [0.5, 1.5]), so
that <u, g> sums no cancelling terms: along a random direction the float32 rounding of a deep head's
gradient is amplified by the cancellation in the dot product, and no bound near 1e-4 could be asserted.
A gradient routed to the wrong elements, or scaled wrongly, still moves <u, g> away from the difference.

The oracle is checked before it judges: its forward output at the layer's values must reproduce ONNX
Runtime's. The head is cut from the normalised model (opset 18 or later), since the reference evaluator's
opset-9 BatchNormalization is wrong (see ../shared/DESIGN.md).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx.reference import ReferenceEvaluator

from adjoint import to_float64
from onnx_gradcam import Explainer
from onnx_gradcam.graph.weights import DetachedWeights
from onnx_gradcam.graph.assemble import with_outputs
from onnx_gradcam.graph.head import cut_head
from onnx_gradcam.sessions import load_light


FORWARD_ATOL = 1e-6
"""ONNX Runtime's float32 Sigmoid returns 0 below about -17, where float64 still gives 3e-8."""


def directional_errors(path: str, explainer: Explainer, feeds: dict, seed: np.ndarray, directions: int = 2,
                       eps: float = 1e-6, forward_rtol: float = 1e-4) -> list[float]:
    """|<u, ours> - fd(u)| / |fd(u)| for ``directions`` directions u of the explainer's (one) layer, ``ours``
    from ``explainer.gradients``; ``path`` is the model file the explainer was made from."""
    view, output = explainer.subject.view, explainer.subject.output
    (layer,) = explainer.layers
    (ours,) = explainer.gradients(feeds, seed).values()
    head = cut_head(view, [layer.tensor], output)
    detached = load_light(path)[1]
    forward = ort.InferenceSession(_complete(with_outputs(view, head.inputs + [output]), detached).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    values = dict(zip(head.inputs + [output], forward.run(head.inputs + [output], feeds)))
    evaluator = ReferenceEvaluator(to_float64(_complete(head.model, detached)))
    point = {name: value.astype(np.float64) if value.dtype.kind == "f" else value
             for name, value in ((n, values[n]) for n in head.inputs)}

    def score(shift: np.ndarray) -> float:
        return float((evaluator.run([output], {**point, layer.tensor: point[layer.tensor] + shift})[0] * seed).sum())

    reproduced = evaluator.run([output], point)[0]
    tolerance = forward_rtol * np.abs(values[output]).max() + FORWARD_ATOL
    assert np.abs(reproduced - values[output]).max() <= tolerance, \
        "the float64 oracle does not reproduce ONNX Runtime's forward output"
    rng = np.random.default_rng(0)
    step = eps * np.abs(point[layer.tensor]).max()
    errors = []
    for _ in range(directions):
        u = ours.gradients.astype(np.float64) * rng.uniform(0.5, 1.5, ours.gradients.shape)
        fd = (score(step * u) - score(-step * u)) / (2 * step)
        errors.append(abs(float((u * ours.gradients.astype(np.float64)).sum()) - fd) / abs(fd))
    return errors


def _complete(model: onnx.ModelProto, detached: DetachedWeights) -> onnx.ModelProto:
    """``model`` (built over weight placeholders) with the weights put back."""
    complete = onnx.ModelProto()
    complete.CopyFrom(model)
    detached.attach(complete)
    return complete
