"""Keras layer names, and tensor layouts, read from a tf2onnx conversion that carries no metadata of ours.

tf2onnx names each ONNX node after the TensorFlow op it came from, and that name holds the Keras name scopes:
``functional_1/conv2d_1/convolution``, ``StatefulPartitionedCall/sequential_1/base_1/conv2d_1/Relu`` (from a
SavedModel), or ``model/conv2d/Conv2D`` (tf.keras 2). In Keras 3 every layer call opens its scope a second
time (the first opening, for ``build``, takes the bare name), so TensorFlow makes it unique with a ``_N``
suffix: ``conv2d`` is called in ``conv2d_1``, and ``conv2d_1`` in ``conv2d_1_2``. Dropping one ``_N`` per
segment gives the layer names back. tf.keras 2 scopes are the bare layer names and are read as they are
(from its known naming; tf_keras is not installed here to check).

tf2onnx's transpose optimiser moves the graph to NCHW between the layout-bound ops and names the
``Transpose`` nodes it adds ``<some node>__<k>`` after a node they may no longer sit next to; those are left
out when finding where a layer ends. The layer tensors found are then mostly NCHW, some NHWC:
:func:`onnx_gradcam.graph.layout.infer_layouts` says which.
"""

from __future__ import annotations

import re
from onnx import ModelProto

from .view import GraphView

PRODUCER = "tf2onnx"
CALL_WRAPPERS = frozenset({"StatefulPartitionedCall", "PartitionedCall"})
"""Scopes a SavedModel's function calls add in front of the model's own scope."""

_UNIQUIFIED = re.compile(r"^(?P<name>.+)_\d+$")
_INSERTED = re.compile(r"__\d+$")


def is_tf2onnx(model: ModelProto) -> bool:
    return model.producer_name == PRODUCER


def keras_scopes(node_name: str, uniquified: bool = True) -> list[str]:
    """The Keras layer paths a node belongs to, outermost first: ``"functional_1/base_1/conv2d_1/Relu"`` ->
    ``["base", "base/conv2d"]``. The model's own scope and the op's name are dropped.

    ``uniquified``: Keras 3 scopes, each ending in ``_N``; a segment without one is a TensorFlow op's inner
    scope (``batchnorm``) and ends the layer path. Otherwise (tf.keras 2) every segment is taken as it is.
    """
    segments = node_name.split("/")[:-1]
    while segments and segments[0] in CALL_WRAPPERS:
        segments = segments[1:]
    paths: list[str] = []
    for segment in segments[1:]:
        if uniquified:
            match = _UNIQUIFIED.match(segment)
            if match is None:
                break
            segment = match["name"]
        paths.append(f"{paths[-1]}/{segment}" if paths else segment)
    return paths


def tf2onnx_layer_names(view: GraphView) -> dict[str, list[str]]:
    """Tensor name -> the Keras layer paths it ends, outermost first (a nested model ends where its last layer
    does). A layer ends at the first output of its last node in graph order, tf2onnx's layout transposes aside;
    a layer called more than once ends where its last call does."""
    scoped = [(index, node) for index, node in enumerate(view.nodes) if not _is_layout_transpose(node)]
    uniquified = _keras3_scopes([node.name for _, node in scoped])
    last_node_of: dict[str, int] = {}
    for index, node in scoped:
        for scope in keras_scopes(node.name, uniquified):
            last_node_of[scope] = index
    names: dict[str, list[str]] = {}
    for scope, index in last_node_of.items():
        output = view.nodes[index].output[0] if view.nodes[index].output else ""
        if output:
            names.setdefault(output, []).append(scope)
    for paths in names.values():
        paths.sort(key=lambda path: path.count("/"))
    return names


def _is_layout_transpose(node) -> bool:
    return node.op_type == "Transpose" and _INSERTED.search(node.name) is not None


def _keras3_scopes(node_names: list[str]) -> bool:
    """Keras 3 naming: every model scope and every top-level layer scope ends in ``_N``. (tf.keras 2 names rarely
    all end so: its scopes are the bare layer names, ``conv2d``, ``dense``.)"""
    for name in node_names:
        segments = [s for s in name.split("/")[:-1] if s not in CALL_WRAPPERS]
        if any(_UNIQUIFIED.match(segment) is None for segment in segments[:2]):
            return False
    return True
