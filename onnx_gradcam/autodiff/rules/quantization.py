"""Quantised ops, differentiated with the straight-through estimator (STE: Bengio, Léonard and Courville 2013,
"Estimating or propagating gradients through stochastic neurons for conditional computation"), as
quantisation-aware training uses it.

An integer tensor on a gradient path carries the gradient with respect to its integer *value*, in a float type
(the driver keeps it so, see :mod:`~onnx_gradcam.autodiff.backward`):

- DequantizeLinear ``y = (q - zp) * s``: ``dq = dy * s`` (``s`` per tensor, or per channel along ``axis``).
- QuantizeLinear ``q = clip(round(x / s) + zp, qmin, qmax)``: rounding passes the gradient unchanged, the clip
  gates it: ``dx = dq / s`` where ``qmin <= round(x / s) + zp <= qmax``, both bounds counting as inside, else 0.
  This is torch's ``fake_quantize_per_tensor_affine`` backward. A QuantizeLinear -> DequantizeLinear pair
  thus passes ``dy`` inside the clip range and nothing outside it.
- A QOperator op (QLinearConv, QGemm, ConvInteger, ...) is differentiated as its float twin, DequantizeLinear
  -> float op -> QuantizeLinear: its operands are dequantised, the float op is recomputed on them (the clip
  range's mask needs the value before rounding and clipping), and the three rules are chained, the float op's
  being the registered rule of that op.

Scales and zero points are constants to the gradient; DynamicQuantizeLinear's are statistics of its input, not
differentiated, as quantisation-aware training does not differentiate its observers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from onnx import TensorProto, helper

from ...graph.builder import node_attributes, normalize_axis
from ..context import GradContext, Step
from ..registry import RULES, rule

MICROSOFT = "com.microsoft"

_INTEGER_BITS = {TensorProto.INT4: (4, True), TensorProto.UINT4: (4, False), TensorProto.INT8: (8, True),
                 TensorProto.UINT8: (8, False), TensorProto.INT16: (16, True), TensorProto.UINT16: (16, False)}


@dataclass(frozen=True)
class Quantized:
    """An operand of a quantised op: the integer ``values`` at input ``index``, ``(values - zero_point) * scale``
    as a float.

    ``scale`` None: the operand is its value minus the zero point (ConvInteger, MatMulInteger). A 1-D scale or
    zero point runs along ``axis`` of the values (per channel); a scalar one is per tensor.
    """

    index: int
    values: str
    scale: Optional[str]
    zero_point: Optional[str]
    axis: int = 1


# --- the two halves of fake quantisation -------------------------------------------------------------------
@rule("DequantizeLinear", quantized=True)
def _dequantize_linear(g: GradContext, s: Step):
    _refuse_blocks(s)
    return s.first(dequantized_gradient(g, s.dy[0], _operand(s, 0, 1, 2, s.attr("axis", 1))) if s.wants[0] else None)


@rule("QuantizeLinear", quantized=True)
def _quantize_linear(g: GradContext, s: Step):
    _refuse_blocks(s)
    zero_point = s.x[2] if s.has_input(2) else None
    return s.first(quantized_gradient(g, s, s.x[0], s.x[1], zero_point, s.attr("axis", 1), s.dy[0]))


@rule("DynamicQuantizeLinear", quantized=True)
def _dynamic_quantize_linear(g: GradContext, s: Step):
    # q = clip(round(x / s) + zp, 0, 255) with s and zp (outputs 1 and 2) computed from x's range.
    return s.first(quantized_gradient(g, s, s.x[0], s.y[1], s.y[2], 1, s.dy[0]))


def dequantized_gradient(g: GradContext, grad: str, operand: Quantized) -> str:
    """The gradient of ``operand``'s integer values from that of its dequantised float: times its scale, in the
    scale's float type (the type of the float the values stand for)."""
    if operand.scale is None:
        return grad
    scale_type = g.view.elem_type(operand.scale)
    grad = g.builder.cast(grad, scale_type) if scale_type else grad
    return g.op("Mul", grad, _along_axis(g, operand.scale, operand.values, operand.axis))


def quantized_gradient(g: GradContext, s: Step, x: str, scale: str, zero_point: Optional[str], axis: int,
                       dq: str) -> str:
    """STE through ``q = clip(round(x / scale) + zero_point)`` of node ``s``: ``dq / scale`` inside the range,
    both bounds included, 0 outside."""
    scale = _along_axis(g, scale, x, axis)
    step = g.op("Div", g.builder.cast(dq, g.builder.elem_type(x)), scale)
    low, high = _integer_range(g, s, zero_point)
    level = g.op("Round", g.op("Div", x, scale))
    if zero_point is not None:
        level = g.op("Add", level, g.builder.cast(_along_axis(g, zero_point, x, axis), g.builder.elem_type(x)))
    inside = g.op("And", g.op("GreaterOrEqual", level, g.scalar(low, level)),
                  g.op("LessOrEqual", level, g.scalar(high, level)))
    return g.where_else_zero(inside, step, x)


def _integer_range(g: GradContext, s: Step, zero_point: Optional[str]) -> tuple[int, int]:
    """``(qmin, qmax)`` of the integer type ``s`` quantises to (its output's, else its zero point's, else uint8)."""
    elem_type = (g.view.elem_type(s.y[0]) or (zero_point and g.view.elem_type(zero_point))
                 or TensorProto.UINT8)
    if elem_type not in _INTEGER_BITS:
        raise ValueError(f"{s.node.op_type} node {s.name!r} quantises to "
                         f"{TensorProto.DataType.Name(elem_type)}: only integer quantisation (int4 to int16) "
                         "has a clip range to differentiate through")
    bits, signed = _INTEGER_BITS[elem_type]
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _along_axis(g: GradContext, parameter: str, values: str, axis: int) -> str:
    """A quantisation parameter shaped to broadcast against ``values``: a 1-D one along ``axis``."""
    shape = g.shape(parameter)
    if shape is not None and (len(shape) == 0 or shape == [1]):
        return parameter
    rank = g.rank(values)
    axis = normalize_axis(axis, rank)
    return g.op("Reshape", parameter, g.ints([-1 if i == axis else 1 for i in range(rank)]))


def _refuse_blocks(s: Step) -> None:
    if s.attr("block_size", 0):
        raise ValueError(f"{s.node.op_type} node {s.name!r}: blocked quantisation (block_size) is not supported; "
                         "quantise per tensor or per channel")


def _operand(s: Step, values: int, scale: Optional[int], zero_point: int, axis: int = 1) -> Quantized:
    """The operand of ``s`` made of its inputs at these positions (an absent zero point, or scale, is None)."""
    return Quantized(values, s.x[values], s.x[scale] if scale is not None else None,
                     s.x[zero_point] if s.has_input(zero_point) else None, axis)


# --- QOperator ops: the float twin DequantizeLinear -> float op -> QuantizeLinear ------------------------------
def float_twin_gradients(g: GradContext, s: Step, op_type: str, operands: Sequence[Quantized],
                         extra_inputs: Sequence[str] = (), requantized: Optional[tuple[str, Optional[str]]] = None,
                         **attrs) -> list[Optional[str]]:
    """The gradients of ``s``'s quantised operands (in ``s``'s input order, None elsewhere) through its float
    twin: ``op_type`` (with ``attrs``) on the dequantised operands and ``extra_inputs`` (a dequantised bias),
    then requantised with ``requantized`` (the output's scale and zero point; None where the output is not
    requantised: int32 or float)."""
    float_type = _float_type(g, s, operands[0].scale)
    twins = [_dequantized(g, operand, float_type) for operand in operands]
    stand_ins = dict(zip(twins, (operand.values for operand in operands)))
    inputs = [*twins, *extra_inputs]
    output, grad = s.y[0], s.dy[0]
    if requantized is not None:
        output = g.op(op_type, *inputs, **attrs)  # the value before rounding and clipping
        stand_ins[output] = s.y[0]
        grad = quantized_gradient(g, s, output, *requantized, 1, grad)
    wants = [s.wants[operand.index] for operand in operands] + [False] * len(extra_inputs)
    synthetic = helper.make_node(op_type, inputs, [output], name=s.name, **attrs)
    twin_grads = RULES[op_type](g.with_stand_ins(stand_ins), Step(synthetic, [grad], wants))
    grads: list[Optional[str]] = [None] * len(s.x)
    for operand, twin_grad, want in zip(operands, twin_grads, wants):
        if want and twin_grad is not None:
            grads[operand.index] = dequantized_gradient(g, twin_grad, operand)
    return grads


def _float_type(g: GradContext, s: Step, scale: Optional[str]) -> int:
    """The float type a float twin computes in: its gradient's, else its scale's, else float32."""
    return g.builder.elem_type(s.dy[0]) or (scale and g.view.elem_type(scale)) or TensorProto.FLOAT


def _dequantized(g: GradContext, operand: Quantized, float_type: int) -> str:
    """``(values - zero_point) * scale`` in ``float_type``, as Cast, Sub and Mul (whose result types the builder
    knows: it would give a DequantizeLinear the integer type of its input)."""
    value = g.builder.cast(operand.values, float_type)
    if operand.zero_point is not None:
        zero_point = _along_axis(g, operand.zero_point, operand.values, operand.axis)
        value = g.op("Sub", value, g.builder.cast(zero_point, float_type))
    if operand.scale is not None:
        value = g.op("Mul", value, g.builder.cast(_along_axis(g, operand.scale, operand.values, operand.axis),
                                                  float_type))
    return value


def _dequantized_bias(g: GradContext, s: Step, bias: int, *scales: str) -> list[str]:
    """The int32 bias at input ``bias`` as a float, its scale the product of ``scales`` (none where absent)."""
    if not s.has_input(bias):
        return []
    float_type = _float_type(g, s, scales[0])
    scale = g.builder.cast(g.op("Mul", *scales) if len(scales) > 1 else scales[0], float_type)
    return [g.op("Mul", g.builder.cast(s.x[bias], float_type), scale)]


@rule("QLinearConv", quantized=True)
def _qlinear_conv(g: GradContext, s: Step):
    # Inputs: x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, bias (scale x_s * w_s).
    return float_twin_gradients(g, s, "Conv", [_operand(s, 0, 1, 2), _operand(s, 3, 4, 5, axis=0)],
                                _dequantized_bias(g, s, 8, s.x[1], s.x[4]), (s.x[6], s.x[7]),
                                **node_attributes(s.node))


@rule("ConvInteger", quantized=True)
def _conv_integer(g: GradContext, s: Step):
    # y (int32) = conv(x - x_zero_point, w - w_zero_point); the Cast and Mul by the scales after it are float ops.
    return float_twin_gradients(g, s, "Conv", [_operand(s, 0, None, 2), _operand(s, 1, None, 3, axis=0)],
                                **node_attributes(s.node))


@rule("QLinearMatMul", quantized=True)
def _qlinear_matmul(g: GradContext, s: Step):
    # Inputs: a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point; a per row, b per column.
    return float_twin_gradients(g, s, "MatMul", [_operand(s, 0, 1, 2, axis=-2), _operand(s, 3, 4, 5, axis=-1)],
                                requantized=(s.x[6], s.x[7]))


@rule("MatMulInteger", quantized=True)
def _matmul_integer(g: GradContext, s: Step):
    return float_twin_gradients(g, s, "MatMul", [_operand(s, 0, None, 2, axis=-2), _operand(s, 1, None, 3, axis=-1)])


@rule("QGemm", domain=MICROSOFT, quantized=True)
def _qgemm(g: GradContext, s: Step):
    # Y = alpha * a_s * b_s * (A'B' + C) (C int32), requantised where y_zero_point is given, else float: ONNX
    # Runtime's kernel adds C before scaling by alpha, so the twin is Gemm with beta = alpha. B is per column.
    if s.has_input(7) and not s.has_input(8):
        raise ValueError(f"QGemm node {s.name!r}: a y_scale without a y_zero_point (a float output divided by "
                         "y_scale) is not supported")
    alpha, trans_b = s.attr("alpha", 1.0), s.attr("transB", 0)
    operands = [_operand(s, 0, 1, 2), _operand(s, 3, 4, 5, axis=0 if trans_b else 1)]
    requantized = (s.x[7], s.x[8]) if s.has_input(8) else None
    return float_twin_gradients(g, s, "Gemm", operands, _dequantized_bias(g, s, 6, s.x[1], s.x[4]), requantized,
                                alpha=alpha, beta=alpha, transA=s.attr("transA", 0), transB=trans_b)


@rule("QLinearAdd", "QLinearMul", domain=MICROSOFT, quantized=True)
def _qlinear_binary(g: GradContext, s: Step):
    # Inputs: A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point (zero points optional).
    float_op = s.node.op_type.removeprefix("QLinear")
    return float_twin_gradients(g, s, float_op, [_operand(s, 0, 1, 2), _operand(s, 3, 4, 5)],
                                requantized=(s.x[6], s.x[7] if s.has_input(7) else None))


@rule("QLinearSigmoid", "QLinearLeakyRelu", domain=MICROSOFT, quantized=True)
def _qlinear_unary(g: GradContext, s: Step):
    # Inputs: X, X_scale, X_zero_point, Y_scale, Y_zero_point (zero points optional).
    return float_twin_gradients(g, s, s.node.op_type.removeprefix("QLinear"), [_operand(s, 0, 1, 2)],
                                requantized=(s.x[3], s.x[4] if s.has_input(4) else None), **node_attributes(s.node))


@rule("QLinearGlobalAveragePool", domain=MICROSOFT, quantized=True)
def _qlinear_global_average_pool(g: GradContext, s: Step):
    if s.attr("channels_last", 0):
        raise ValueError(f"QLinearGlobalAveragePool node {s.name!r}: channels_last=1 is not supported; export the "
                         "model in QDQ form (quantize_static(..., quant_format=QuantFormat.QDQ))")
    return float_twin_gradients(g, s, "GlobalAveragePool", [_operand(s, 0, 1, 2)], requantized=(s.x[3], s.x[4]))


@rule("QLinearConcat", domain=MICROSOFT, quantized=True)
def _qlinear_concat(g: GradContext, s: Step):
    # Inputs: Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per concatenated tensor.
    operands = [_operand(s, i, i + 1, i + 2) for i in range(2, len(s.x), 3)]
    return float_twin_gradients(g, s, "Concat", operands, requantized=(s.x[0], s.x[1]), axis=s.attr("axis"))
