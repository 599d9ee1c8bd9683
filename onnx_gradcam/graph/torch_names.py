"""PyTorch module paths of a graph's nodes, read from what the exporter left.

The dynamo exporter records them in each node's ``pkg.torch.onnx.name_scopes`` metadata. The legacy
(TorchScript) exporter, the only route to opsets below 18, and tools that rewrite graphs after it (onnxsim,
onnxslim, ONNX Runtime's optimiser) leave them in the node names instead:
``/layer3/layer3.1/relu_1/Relu`` is the ``Relu`` op of ``layer3.1``'s ``relu`` module, called a second
time. Each segment is either a module's full path (``layer3.1``) or an attribute of the one before
(``relu`` of ``layer3.1``); a module called again gets ``_<n>`` appended, which is dropped where the bare
name is also seen under the same parent.
"""

from __future__ import annotations

import ast
import re

from onnx import NodeProto

DYNAMO_SCOPES = "pkg.torch.onnx.name_scopes"
_REPEATED_CALL = re.compile(r"^(?P<name>.+)_\d+$")


def module_scopes(nodes: list[NodeProto]) -> dict[str, list[str]]:
    """Node name -> the module paths it belongs to, outermost first (the root and the op itself dropped)."""
    scopes = {node.name: _dynamo_scopes(node) for node in nodes}
    if any(scopes.values()):
        return scopes
    legacy = {node.name: _legacy_paths(node.name) for node in nodes}
    seen = {path for paths in legacy.values() for path in paths}
    return {name: [_without_repeat(path, seen) for path in paths] for name, paths in legacy.items()}


def _dynamo_scopes(node: NodeProto) -> list[str]:
    for prop in node.metadata_props:
        if prop.key == DYNAMO_SCOPES:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return []
            return [s for s in scopes[:-1] if s]
    return []


def _legacy_paths(node_name: str) -> list[str]:
    """``/layer3/layer3.1/relu_1/Relu`` -> ``["layer3", "layer3.1", "layer3.1.relu_1"]``."""
    if not node_name.startswith("/"):
        return []
    paths: list[str] = []
    for segment in node_name.split("/")[1:-1]:
        parent = paths[-1] if paths else ""
        full = segment if not parent or segment.startswith(parent + ".") else f"{parent}.{segment}"
        paths.append(full)
    return paths


def _without_repeat(path: str, seen: set[str]) -> str:
    """``layer3.1.relu_1`` -> ``layer3.1.relu`` where ``layer3.1.relu`` is a module of the graph too."""
    match = _REPEATED_CALL.match(path)
    return match["name"] if match and match["name"] in seen else path
