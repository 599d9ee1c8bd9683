"""What kind of place in the graph each candidate layer is, from the graph alone.

On the tensors between the image inputs and the explained output (weights left out):

- a **cut**: every path from the inputs to the output passes through the tensor: it dominates the output
  (a residual block's output, a merge's output, a plain chain). Its map sees everything the output sees.
- **inside a residual branch**: a path bypasses the tensor and rejoins it at an addition (``Add``, ``Sum``),
  the *merge*: a map there shows the branch's share only. The block's output, the first cut after it, is
  what to use instead.
- **a branch before a merge**: the same, where the branches rejoin otherwise (a ``Concat`` of Inception or
  DenseNet, a product): a fine choice when that branch is what one wants to see.

Dominators are computed on the tensor graph in topological order (Cooper, Harvey and Kennedy's intersection
of dominator chains; one pass suffices on an acyclic graph). ``depth`` is the number of convolutions and
matrix products on the longest path from an input; ``stride`` the input's height over the layer's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

from .layout import guess_input_layout, image_hw
from .view import GraphView

if TYPE_CHECKING:
    from .layers import Layer

CUT, RESIDUAL, BRANCH = "cut", "inside a residual branch", "branch before a merge"
ADDITIONS = frozenset({"Add", "Sum"})
WEIGHTED = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul",
                      "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"})
_ROOT = ""


@dataclass(frozen=True)
class Place:
    """``merge``: the tensor where the bypassed branches rejoin; ``use_instead``: the first cut after the
    layer (its framework name where it has one). Both None for a cut."""

    kind: str
    depth: int
    stride: Optional[float] = None
    merge: Optional[str] = None
    use_instead: Optional[str] = None


def places(view: GraphView, output: str, layers: Sequence[Layer]) -> dict[str, Place]:
    """The :class:`Place` of each layer's tensor."""
    region = view.ancestors([output]) & view.depends_on(view.input_names)
    order, preds = _tensor_graph(view, region)
    idom = _dominators(order, preds)
    cuts, name = [], output
    while name != _ROOT:
        cuts.append(name)
        name = idom[name]
    cuts.sort(key=order.__getitem__)
    depth = _depths(view, region)
    names = {layer.tensor: layer.name for layer in layers if layer.name}
    found = {}
    for layer in layers:
        tensor = layer.tensor
        stride = _stride(view, layer)
        if tensor in cuts or tensor not in order:
            found[tensor] = Place(CUT, depth.get(tensor, 0), stride)
            continue
        after = next(cut for cut in cuts if order[cut] > order[tensor])
        merge = _merge(view, tensor, after, order, region)
        kind = RESIDUAL if merge is not None and view.producer[merge].op_type in ADDITIONS else BRANCH
        block = _named_block_output(view, after, cuts, names, region)
        found[tensor] = Place(kind, depth.get(tensor, 0), stride, merge, names.get(block, block))
    return found


def _named_block_output(view: GraphView, cut: str, cuts: list[str], names: dict[str, str], region: set[str]) -> str:
    """``cut``, or the first cut with a framework name on the chain that continues it op by op (a residual
    block's Add, then its ReLU: the block's output, ``layer3.1``)."""
    index = cuts.index(cut)
    while cut not in names and index + 1 < len(cuts):
        following = cuts[index + 1]
        if [name for name in view.producer[following].input if name in region] != [cut]:
            break
        cut, index = following, index + 1
    return cut


def _tensor_graph(view: GraphView, region: set[str]) -> tuple[dict[str, int], dict[str, list[str]]]:
    """(topological position of each region tensor, its region predecessors: the root for an input)."""
    order: dict[str, int] = {}
    preds: dict[str, list[str]] = {}
    for name in view.input_names:
        if name in region:
            order[name], preds[name] = len(order), [_ROOT]
    for node in view.nodes:
        inputs = [name for name in node.input if name in order]
        for name in node.output:
            if name in region and name not in order:
                order[name], preds[name] = len(order), inputs or [_ROOT]
    return order, preds


def _dominators(order: dict[str, int], preds: dict[str, list[str]]) -> dict[str, str]:
    """The immediate dominator of every tensor (the root's children: the root)."""
    position = {**order, _ROOT: -1}
    idom: dict[str, str] = {}

    def intersect(a: str, b: str) -> str:
        while a != b:
            while position[a] > position[b]:
                a = idom[a]
            while position[b] > position[a]:
                b = idom[b]
        return a

    for name in sorted(order, key=order.__getitem__):
        first, *rest = preds[name]
        dominator = first
        for pred in rest:
            dominator = intersect(dominator, pred)
        idom[name] = dominator
    return idom


def _merge(view: GraphView, tensor: str, cut: str, order: dict[str, int], region: set[str]) -> Optional[str]:
    """The last tensor before (or at) ``cut`` made by a node that reads the branch through ``tensor`` and a
    path that bypasses it."""
    through = view.depends_on([tensor])
    merge = None
    for node in view.nodes:
        made = [name for name in node.output if name in order]
        if not made or order[made[0]] > order[cut]:
            continue
        reads = [name for name in node.input if name in region]
        if any(name in through for name in reads) and any(name not in through for name in reads):
            merge = made[0]
    return merge


def _depths(view: GraphView, region: set[str]) -> dict[str, int]:
    """Convolutions and matrix products on the longest path from an input to each tensor."""
    depth = {name: 0 for name in view.input_names}
    for node in view.nodes:
        before = max((depth.get(name, 0) for name in node.input if name in region), default=0)
        for name in node.output:
            depth[name] = before + (node.op_type in WEIGHTED)
    return depth


def _stride(view: GraphView, layer: Layer) -> Optional[float]:
    """The image input's height over the layer's, where both are known."""
    heights = [image_hw(view.shape(name), guess_input_layout(view.shape(name)))[0]
               for name in view.input_names if view.rank(name) == 4]
    layer_height = layer.shape[layer.spatial_axes[0]]
    if not heights or not isinstance(heights[0], int) or not isinstance(layer_height, int) or not layer_height:
        return None
    return heights[0] / layer_height
