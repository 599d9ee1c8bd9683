"""The ops ONNX Runtime's offline optimiser writes (``SessionOptions.optimized_model_filepath``): the com.microsoft
fusions of ORT_ENABLE_EXTENDED, and the com.microsoft.nchwc blocked-layout ops of ORT_ENABLE_ALL.

A fused op is differentiated through the registered rules of the standard ops it fuses, run on synthetic nodes,
so its gradient is made of standard ops. The definitions are ONNX Runtime's: ``docs/ContribOperators.md`` and,
where that says "for internal use" (the nchwc ops), the kernels and the optimiser that writes them
(``onnxruntime/contrib_ops/cpu/nchwc_ops.cc``, ``onnxruntime/core/optimizer/nchwc_transformer.cc``).

NCHWc. A blocked tensor of logical shape (N, C, H, W) holds the values of the (N, C/b, H, W, b) tensor: blocks of
b channels innermost, b being 8 or 16 as the CPU decides (AVX2, AVX-512), C padded with zeros to a multiple of
b. Its gradient has the same layout. Only the nchwc ops' own ReorderInput and ReorderOutput convert between the
layouts here, so the gradient never depends on b, and runs wherever the forward model does (the machine it was
optimised for). onnx's shape inference does not know these ops: their tensors have no inferred shape or type.
(``g.op(..., domain=NCHWC)`` emits an nchwc op: ``domain`` reaches ``onnx.helper.make_node``.)
"""

from __future__ import annotations

from typing import Callable, Optional

from onnx import helper

from ...graph.builder import node_attributes
from ...graph.layout import NCHWC
from ...graph.view import Dim
from ..context import GradContext, Step
from ..registry import RULES, rule

MICROSOFT = "com.microsoft"


# --- running standard rules on synthetic nodes ---------------------------------------------------------------
def _standard_rule(g: GradContext, op_type: str, inputs: list[str], output: str, dy: str, wants: list[bool],
                   shapes: Optional[dict[str, list[Dim]]] = None, **attrs) -> list[Optional[str]]:
    """The gradients the registered rule of standard op ``op_type`` gives for ``op_type(inputs) -> output``;
    ``shapes`` tells it the shapes of tensors the view does not know."""
    context = g.with_shapes(shapes) if shapes else g
    node = helper.make_node(op_type, inputs, [output], **attrs)
    return RULES[op_type](context, Step(node, [dy], wants))


# --- fused activations ---------------------------------------------------------------------------------------
def _conv_activation(s: Step) -> tuple[Optional[str], dict, list[float]]:
    """FusedConv's and nchwc Conv's activation: the op, its attributes and Clip's bounds, from ``activation`` and
    ``activation_params`` as GetFusedActivationAttr reads them (onnxruntime/contrib_ops/cpu/fused_activation.cc)."""
    activation, params = s.attr("activation"), list(s.attr("activation_params", []))
    if activation == "Clip":
        return activation, {}, params
    names = {"LeakyRelu": ("alpha",), "HardSigmoid": ("alpha", "beta")}.get(activation, ())
    return activation, dict(zip(names, params)), []


def _gemm_activation(s: Step) -> tuple[Optional[str], dict, list[float]]:
    """FusedGemm's activation: any elementwise op, its attributes those of the node named ``activation_<name>``."""
    prefix = "activation_"
    attrs = {key[len(prefix):]: value for key, value in node_attributes(s.node).items() if key.startswith(prefix)}
    return s.attr("activation"), attrs, []


def _through_activation(g: GradContext, s: Step, activation: tuple[Optional[str], dict, list[float]],
                        pre_activation: Callable[[], str]) -> str:
    """The gradient of the pre-activation p of ``s``'s output y = activation(p), from the activation's own rule.

    Where that rule reads only y, or compares its input with points the activation leaves in place (Clip's
    bounds, LeakyRelu's 0 for a slope >= 0), it is given y as its input too: y there says what p would. Else p
    is recomputed by ``pre_activation``.
    """
    op_type, attrs, bounds = activation
    if not op_type:
        return s.dy[0]
    if op_type not in RULES:
        raise ValueError(f"{s.node.op_type} node {s.name!r}: no gradient rule for its fused activation {op_type!r}")
    y = s.y[0]
    output_decides = op_type in ("Relu", "Sigmoid", "Tanh", "Clip") or (op_type == "LeakyRelu"
                                                                         and attrs.get("alpha", 0.01) >= 0)
    x = y if output_decides else pre_activation()
    inputs = [x, *(g.scalar(bound, y) for bound in bounds)]
    return _standard_rule(g, op_type, inputs, y, s.dy[0], [True] + [False] * len(bounds), **attrs)[0]


def _summand_gradient(s: Step, dpre: str) -> list[Optional[str]]:
    """The gradient of input 3, the tensor a fused Conv adds before its activation (FusedConv's Z, nchwc Conv's
    Sum), where the node has one: ``dpre``, the pre-activation's."""
    return [dpre if s.wants[3] else None] if len(s.x) > 3 else []


@rule("FusedConv", domain=MICROSOFT)
def _fused_conv(g: GradContext, s: Step):
    """Y = activation(Conv(X, W, B) + Z) (Z optional, the same shape as Y): Conv's rule after the activation's."""
    attrs = node_attributes(s.node, drop=("activation", "activation_params"))

    def pre_activation() -> str:
        conv = g.op("Conv", *s.x[:3], **attrs)
        return g.op("Add", conv, s.x[3]) if s.has_input(3) else conv

    dpre = _through_activation(g, s, _conv_activation(s), pre_activation)
    return _standard_rule(g, "Conv", s.x[:3], s.y[0], dpre, s.wants[:3], **attrs) + _summand_gradient(s, dpre)


@rule("FusedGemm", domain=MICROSOFT)
def _fused_gemm(g: GradContext, s: Step):
    """Y = activation(alpha A'B' + beta C): Gemm's rule after the activation's."""
    attrs = {key: value for key, value in node_attributes(s.node).items() if not key.startswith("activation")}
    dpre = _through_activation(g, s, _gemm_activation(s), lambda: g.op("Gemm", *s.x, **attrs))
    return _standard_rule(g, "Gemm", s.x, s.y[0], dpre, s.wants, **attrs)


# --- GELU and friends ----------------------------------------------------------------------------------------
def _biased_gelu(g: GradContext, s: Step, approximate: str) -> list[Optional[str]]:
    """Y = Gelu(X + bias) (bias optional, broadcast along the last axis): Gelu's rule at the recomputed sum."""
    biased = g.op("Add", s.x[0], s.x[1]) if s.has_input(1) else s.x[0]
    grad = _standard_rule(g, "Gelu", [biased], s.y[0], s.dy[0], [True], approximate=approximate)[0]
    dbias = g.unbroadcast(grad, s.x[1], s.y[0]) if s.has_input(1) and s.wants[1] else None
    return [grad if s.wants[0] else None] + ([dbias] if len(s.x) > 1 else [])


@rule("Gelu", "BiasGelu", domain=MICROSOFT)
def _gelu(g: GradContext, s: Step):
    """Gelu: x Phi(x), erf-exact; BiasGelu: the same of A + B."""
    return _biased_gelu(g, s, "none")


@rule("FastGelu", domain=MICROSOFT)
def _fast_gelu(g: GradContext, s: Step):
    """0.5 x (1 + tanh(0.797885 x + 0.035677 x^3)) of X + bias: the tanh approximation of Gelu."""
    return _biased_gelu(g, s, "tanh")


@rule("QuickGelu", domain=MICROSOFT)
def _quick_gelu(g: GradContext, s: Step):
    """y = x sigmoid(alpha x) (SiLU where alpha = 1): y' = s (1 + alpha x (1 - s)), s = sigmoid(alpha x)."""
    x = s.x[0]
    alpha = g.scalar(s.attr("alpha", 1.702), x)
    scaled = g.op("Mul", x, alpha)
    gate = g.op("Sigmoid", scaled)
    slope = g.op("Mul", gate, g.op("Add", g.scalar(1.0, x), g.op("Mul", scaled, g.op("Sub", g.scalar(1.0, x), gate))))
    return s.first(g.op("Mul", s.dy[0], slope))


# --- matrix products and normalisation -----------------------------------------------------------------------
def _matmul_operand_axes(rank: int, transposed: int, batch_transposed: int) -> list[int]:
    """The axes of a FusedMatMul operand as MatMul takes it (FusedMatMulShapeInference, contrib_defs.cc): a
    transposed batch moves the first axis to the matrix rows, a transposed matrix swaps the last two axes; a
    vector stays as it is."""
    if rank < 2:
        return list(range(rank))
    axes = list(range(1, rank - 1)) + [0, rank - 1] if batch_transposed else list(range(rank))
    if transposed:
        axes[-2:] = axes[-1], axes[-2]
    return axes


@rule("FusedMatMul", domain=MICROSOFT)
def _fused_matmul(g: GradContext, s: Step):
    """Y = alpha A'B', the operands transposed as ``transA``, ``transB``, ``transBatchA``, ``transBatchB`` say:
    MatMul's rule on the transposed operands, each gradient transposed back."""
    operands, shapes, all_axes = [], {}, []
    for x, (transposed, batch) in zip(s.x, (("transA", "transBatchA"), ("transB", "transBatchB"))):
        shape = g.shape(x)
        if shape is None:
            raise ValueError(f"FusedMatMul node {s.name!r}: the rank of its operand {x!r} is unknown")
        axes = _matmul_operand_axes(len(shape), s.attr(transposed, 0), s.attr(batch, 0))
        if axes != sorted(axes):
            x = g.op("Transpose", x, perm=axes)
            shapes[x] = [shape[axis] for axis in axes]
        operands.append(x)
        all_axes.append(axes)
    alpha = s.attr("alpha", 1.0)
    dy = s.dy[0] if alpha == 1.0 else g.op("Mul", s.dy[0], g.scalar(alpha, s.y[0]))
    grads = _standard_rule(g, "MatMul", operands, s.y[0], dy, s.wants, shapes)
    return [g.op("Transpose", grad, perm=[axes.index(a) for a in range(len(axes))])
            if grad is not None and axes != sorted(axes) else grad for grad, axes in zip(grads, all_axes)]


@rule("SkipLayerNormalization", domain=MICROSOFT)
def _skip_layer_normalization(g: GradContext, s: Step):
    """LayerNormalization over the last axis of S = input + skip + bias, scaled by gamma, shifted by beta; the
    fourth output, if any, is S itself. The mean and inverse deviation outputs carry no gradient."""
    if any(dy is not None for dy in s.dy[1:3]):
        raise ValueError(f"SkipLayerNormalization node {s.name!r}: a gradient flows into its mean or inverse "
                         "standard deviation output; only the output and the sum can be differentiated through")
    x, skip = s.x[:2]
    total = g.op("Add", x, skip)
    if s.has_input(4):
        total = g.op("Add", total, s.x[4])
    through_norm = None
    if s.dy[0] is not None:
        norm_inputs = [total, s.x[2]] + ([s.x[3]] if s.has_input(3) else [])
        through_norm = _standard_rule(g.with_stand_ins({total: x}), "LayerNormalization", norm_inputs, s.y[0],
                                      s.dy[0], [True] + [False] * (len(norm_inputs) - 1), axis=-1,
                                      epsilon=s.attr("epsilon", 1e-12))[0]
    summed = [grad for grad in (through_norm, s.dy[3] if len(s.dy) > 3 else None) if grad is not None]
    dtotal = summed[0] if len(summed) == 1 else g.op("Add", *summed)
    dskip = g.unbroadcast(dtotal, skip, x) if s.wants[1] else None
    return [dtotal if s.wants[0] else None, dskip] + [None] * (len(s.x) - 2)


# --- the nchwc layout (ORT_ENABLE_ALL) -----------------------------------------------------------------------
@rule("ReorderInput", domain=NCHWC)
def _reorder_input(g: GradContext, s: Step):
    """NCHW (NHWC with ``channels_last``) to NCHWc, padding zero channels: a permutation, whose adjoint is the
    inverse reorder of the real channels."""
    channels_last = s.attr("channels_last", 0)
    shape = g.shape(s.x[0])
    channels = shape[-1 if channels_last else 1] if shape else None
    if not isinstance(channels, int):
        raise ValueError(f"ReorderInput node {s.name!r}: the channel count of {s.x[0]!r} is unknown")
    return s.first(g.op("ReorderOutput", s.dy[0], channels=channels, channels_last=channels_last, domain=NCHWC))


@rule("ReorderOutput", domain=NCHWC)
def _reorder_output(g: GradContext, s: Step):
    """NCHWc to NCHW (NHWC with ``channels_last``), keeping the first ``channels``: its adjoint blocks the
    gradient again, zero in the padding channels. ReorderInput takes a multiple of 4 channels only: the
    gradient is padded with zero channels to one first (a segmentation head's 21 classes)."""
    channels_last, missing = s.attr("channels_last", 0), -s.attr("channels") % 4
    dy = s.dy[0]
    if missing:
        dy = g.op("Pad", dy, g.ints([0] * 4 + ([0, 0, 0, missing] if channels_last else [0, missing, 0, 0])))
    return s.first(g.op("ReorderInput", dy, channels_last=channels_last, domain=NCHWC))


def _reads_blocked_input(s: Step, group: int, channels: int) -> bool:
    """Whether an nchwc Conv reads X in the NCHWc layout: all do but an ungrouped one on fewer channels than the
    block (NchwcTransformerImpl::TransformConv), which reads NCHW. Blocks being 8 or 16 channels, and blocked
    inputs a multiple of the block, only 8 channels leave that to the machine."""
    if channels == 8 and group == 1:
        raise ValueError(f"nchwc Conv node {s.name!r} has 8 input channels: whether it reads them blocked depends "
                         "on the machine's block size; optimise the model at ORT_ENABLE_EXTENDED instead")
    return group > 1 or channels >= 16


def _plain_filter(g: GradContext, filter_name: str, shape: tuple[int, ...], input_blocks: bool) -> str:
    """The OIHW filter an nchwc Conv's reordered filter was made from, with its zero padding output channels.

    The optimiser writes MlasReorderFilterOIHWBo (depthwise and NCHW-input convolutions) or OIHWBiBo: both put
    the blocks of output channels outermost and their b channels innermost, as an NCHWc activation of shape
    (1, O, I*kh*kw, 1) lies, which ReorderOutput undoes; OIHWBiBo's (``input_blocks``) input channels are then
    blocked within each output channel as an NCHWc (O, I, kh*kw, 1) lies, undone likewise.
    """
    outputs, inputs, height, width = shape
    unblocked = g.op("ReorderOutput", g.op("Reshape", filter_name, g.ints([1, outputs, inputs * height * width, 1])),
                     channels=outputs, domain=NCHWC)
    if input_blocks:
        unblocked = g.op("ReorderOutput", g.op("Reshape", unblocked, g.ints([outputs, inputs, height * width, 1])),
                         channels=inputs, domain=NCHWC)
    return g.op("Reshape", unblocked, g.ints(shape))


@rule("Conv", domain=NCHWC)
def _nchwc_conv(g: GradContext, s: Step):
    """Y = activation(Conv(X, W, B) + Sum) in the NCHWc layout, W reordered for it (NchwcConv::Compute copies Sum
    into Y, which the convolution adds to before the activation). The activation's rule runs on the blocked
    tensors (elementwise, any layout), Conv's on the NCHW gradient with the filter reordered back."""
    weight_shape = tuple(g.static_shape(s.x[1]))
    group = s.attr("group", 1)
    x_channels = weight_shape[1] * group
    blocked_input = _reads_blocked_input(s, group, x_channels)
    depthwise = group > 1 and weight_shape[1] == 1
    attrs = node_attributes(s.node, drop=("activation", "activation_params"))
    dpre = _through_activation(g, s, _conv_activation(s), lambda: g.op("Conv", *s.x, domain=NCHWC, **attrs))
    filter_plain = _plain_filter(g, s.x[1], weight_shape, blocked_input and not depthwise)
    dpre_plain = g.op("ReorderOutput", dpre, channels=weight_shape[0], domain=NCHWC)
    dx = _standard_rule(g, "Conv", [s.x[0], filter_plain], s.y[0], dpre_plain, [s.wants[0], False],
                        {s.x[0]: [None, x_channels, None, None]}, **attrs)[0]
    if blocked_input and dx is not None:
        dx = g.op("ReorderInput", dx, domain=NCHWC)
    return [dx] + [None] * (min(len(s.x), 3) - 1) + _summand_gradient(s, dpre)
