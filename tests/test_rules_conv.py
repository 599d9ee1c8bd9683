"""Adjoint checks for Conv and ConvTranspose: the input gradient of each is the other."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

from adjoint import DIMS, attr_text, check_adjoint, model_text, parse, shape_text, spatial_sizes
from onnx_gradcam.autodiff import gradient_model


def conv_text(op, x_shape, w_shape, attrs, bias=None, batch=None):
    """One Conv/ConvTranspose node; ``batch`` names a symbolic batch dim."""
    inputs = f"float{shape_text(([batch] if batch else x_shape[:1]) + x_shape[1:])} x, float{shape_text(w_shape)} w"
    args = "x, w"
    if bias is not None:
        inputs += f", float[{bias}] b"
        args += ", b"
    return model_text(f"y = {op}{attr_text(attrs)}({args})", inputs, f"float{shape_text('?' * len(x_shape))} y")


def torch_pad(x, pads, value=0.0):
    """ONNX ``[begin..., end...]`` pads applied with torch (whose F.pad lists the last axis first)."""
    rank = len(pads) // 2
    order = [p for axis in reversed(range(rank)) for p in (pads[axis], pads[rank + axis])]
    return F.pad(x, order, value=value)


def same_pads(spatial, kernel, strides, dilations, upper):
    """``auto_pad=SAME_*`` resolved as the ONNX spec words it: output ceil(size / stride), odd pad at the end
    (SAME_UPPER) or the beginning (SAME_LOWER)."""
    begins, ends = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
        begins.append(total // 2 if upper else total - total // 2)
        ends.append(total - begins[-1])
    return begins + ends


def torch_conv_oracle(attrs):
    """Conv in float64 by torch, pads (explicit or SAME_*) applied by hand since torch's are symmetric."""
    def oracle(feeds):
        x, w = torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["w"])
        rank = x.dim() - 2
        strides, dilations = attrs.get("strides", [1] * rank), attrs.get("dilations", [1] * rank)
        pads = attrs.get("pads", [0] * 2 * rank)
        if attrs.get("auto_pad", "NOTSET").startswith("SAME"):
            pads = same_pads(x.shape[2:], w.shape[2:], strides, dilations, attrs["auto_pad"] == "SAME_UPPER")
        conv = getattr(F, f"conv{rank}d")
        return conv(torch_pad(x, pads), w, stride=strides, dilation=dilations, groups=attrs.get("group", 1)).numpy()
    return oracle


CONV_CASES = {
    "1d_stride_asym_pads": ([2, 3, 9], [4, 3, 3], {"strides": [2], "pads": [1, 2]}),
    "2d_plain": ([2, 3, 6, 5], [4, 3, 3, 3], {}),
    "2d_strides_asym_pads": ([2, 3, 7, 8], [4, 3, 3, 2], {"strides": [2, 3], "pads": [0, 1, 2, 1]}),
    "2d_dilations": ([1, 2, 9, 8], [3, 2, 3, 3], {"dilations": [2, 3], "pads": [2, 0, 1, 3]}),
    "2d_kernel_shape_attr": ([1, 2, 6, 6], [3, 2, 2, 3], {"kernel_shape": [2, 3], "pads": [1, 1, 0, 0]}),
    "2d_groups": ([2, 4, 6, 6], [6, 2, 3, 3], {"group": 2, "pads": [1, 1, 1, 1]}),
    "2d_depthwise": ([2, 3, 7, 7], [3, 1, 3, 3], {"group": 3, "strides": [2, 2], "pads": [1, 0, 0, 1]}),
    "2d_depthwise_multiplier": ([1, 3, 6, 6], [6, 1, 3, 3], {"group": 3, "dilations": [1, 2]}),
    # Size 8, kernel 3, stride 2: the last row and column are in no window, their gradient is zero.
    "2d_trailing_rows": ([1, 2, 8, 8], [3, 2, 3, 3], {"strides": [2, 2]}),
    "2d_trailing_dilated": ([1, 2, 10, 9], [3, 2, 3, 2], {"strides": [3, 2], "dilations": [2, 2],
                                                          "pads": [0, 1, 0, 0]}),
    "2d_valid": ([1, 2, 8, 7], [3, 2, 3, 3], {"auto_pad": "VALID", "strides": [2, 2]}),
    "3d": ([1, 2, 5, 4, 6], [3, 2, 3, 2, 3], {"strides": [1, 2, 2], "pads": [1, 0, 1, 0, 1, 1]}),
    "3d_groups_dilations": ([1, 4, 5, 5, 5], [4, 2, 2, 2, 2], {"group": 2, "dilations": [2, 1, 2]}),
}


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv(case, bias, dims):
    x_shape, w_shape, attrs = case
    check_adjoint(conv_text("Conv", x_shape, w_shape, attrs, bias=w_shape[0] if bias else None), ["x"],
                  sizes=spatial_sizes(dims, x_shape))


SAME_CASES = {
    "1d_stride2_odd_total": ([2, 3, 8], [2, 3, 3], {"strides": [2]}),        # total pad 1
    "1d_kernel4": ([1, 2, 7], [2, 2, 4], {}),                                  # total pad 3
    "2d_mixed": ([1, 2, 8, 7], [3, 2, 3, 4], {"strides": [2, 1]}),
    "2d_stride3": ([1, 2, 10, 9], [3, 2, 2, 5], {"strides": [3, 2]}),  # (ONNX Runtime: no SAME with dilations)
    "2d_depthwise": ([1, 3, 7, 6], [3, 1, 3, 3], {"group": 3, "strides": [2, 2]}),
    "3d": ([1, 2, 5, 4, 6], [2, 2, 2, 3, 3], {"strides": [2, 1, 2]}),
}


# onnx's ReferenceEvaluator resolves SAME_* pads wrongly: torch in float64 is the oracle.
@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("case", SAME_CASES.values(), ids=SAME_CASES.keys())
def test_conv_same(case, auto_pad, dims):
    x_shape, w_shape, attrs = case
    attrs = {**attrs, "auto_pad": auto_pad}
    check_adjoint(conv_text("Conv", x_shape, w_shape, attrs), ["x"], oracle=torch_conv_oracle(attrs),
                  sizes=spatial_sizes(dims, x_shape))


@pytest.mark.parametrize("attrs", [{"pads": [1, 0, 2, 1], "strides": [2, 2]},
                                   {"auto_pad": "SAME_LOWER", "strides": [2, 2]}], ids=["pads", "same_lower"])
def test_conv_symbolic_batch(attrs):
    text = conv_text("Conv", [3, 2, 8, 7], [4, 2, 3, 3], attrs, batch="N")
    x = np.random.default_rng(6).standard_normal((3, 2, 8, 7)).astype(np.float32)
    check_adjoint(text, ["x"], inputs={"x": x}, oracle=torch_conv_oracle(attrs))


@pytest.mark.parametrize("attrs", [{"pads": [1, 0, 2, 1], "strides": [2, 3], "dilations": [1, 2]},
                                   {"auto_pad": "SAME_UPPER", "strides": [2, 3]},
                                   {"auto_pad": "SAME_LOWER", "strides": [3, 2]}],
                         ids=["pads", "same_upper", "same_lower"])
def test_conv_symbolic_batch_and_spatial_dims(attrs):
    """One gradient model for a model of unknown batch, height and width, checked at two sizes."""
    text = model_text(f"y = Conv{attr_text(attrs)}(x, w)", "float[N,2,H,W] x, float[3,2,3,3] w", "float[?,?,?,?] y")
    rng = np.random.default_rng(5)
    feeds = [{"x": rng.standard_normal(shape).astype(np.float32)} for shape in [(2, 2, 9, 11), (3, 2, 16, 13)]]
    check_adjoint(text, ["x"], inputs=feeds, oracle=torch_conv_oracle(attrs))


def torch_conv_transpose_oracle(attrs):
    """ConvTranspose in float64 by torch: the full transposed conv, output_padding appended, pads cropped."""
    def oracle(feeds):
        x, w = torch.from_numpy(feeds["x"]), torch.from_numpy(feeds["w"])
        rank = x.dim() - 2
        full = getattr(F, f"conv_transpose{rank}d")(x, w, stride=attrs.get("strides", 1), groups=attrs.get("group", 1),
                                                    dilation=attrs.get("dilations", 1))
        full = torch_pad(full, [0] * rank + attrs.get("output_padding", [0] * rank))
        pads = attrs.get("pads", [0] * 2 * rank)
        crop = (slice(b, n - e) for b, e, n in zip(pads[:rank], pads[rank:], full.shape[2:]))
        return full[(..., *crop)].numpy()
    return oracle


CONV_TRANSPOSE_CASES = {
    "1d": ([2, 3, 5], [3, 2, 3], {"strides": [2], "pads": [1, 0], "output_padding": [1]}),
    "2d_plain": ([1, 3, 4, 5], [3, 2, 3, 3], {}),
    "2d_strides_asym_pads": ([2, 3, 4, 4], [3, 2, 3, 2], {"strides": [2, 3], "pads": [0, 1, 2, 1]}),
    # output_padding below and above the end pad
    "2d_output_padding": ([1, 2, 4, 3], [2, 3, 3, 3], {"strides": [2, 3], "pads": [1, 0, 0, 2],
                                                       "output_padding": [1, 2]}),
    "2d_dilations": ([1, 2, 4, 5], [2, 2, 3, 2], {"dilations": [2, 3], "pads": [1, 2, 2, 0]}),
    "2d_dilations_output_padding": ([1, 2, 3, 3], [2, 2, 2, 2], {"strides": [2, 2], "dilations": [3, 1],
                                                                 "output_padding": [1, 1]}),
    "2d_valid": ([1, 2, 3, 4], [2, 3, 2, 2], {"auto_pad": "VALID", "strides": [2, 2]}),
    "3d": ([1, 2, 3, 2, 3], [2, 2, 2, 3, 2], {"strides": [2, 1, 2], "pads": [0, 1, 1, 1, 0, 0],
                                              "output_padding": [1, 0, 1]}),
}


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("bias", [False, True], ids=["no_bias", "bias"])
@pytest.mark.parametrize("case", CONV_TRANSPOSE_CASES.values(), ids=CONV_TRANSPOSE_CASES.keys())
def test_conv_transpose(case, bias, dims):
    x_shape, w_shape, attrs = case
    text = conv_text("ConvTranspose", x_shape, w_shape, attrs, bias=w_shape[1] if bias else None)
    check_adjoint(text, ["x"], sizes=spatial_sizes(dims, x_shape))


GROUPED_TRANSPOSE_CASES = {
    "groups": ([1, 4, 4, 4], [4, 3, 3, 3], {"group": 2, "pads": [1, 0, 0, 1]}),
    "depthwise_strided": ([2, 3, 3, 4], [3, 1, 3, 3], {"group": 3, "strides": [2, 2], "pads": [1, 1, 0, 1],
                                                       "output_padding": [1, 0]}),
    "groups_dilated": ([1, 4, 3, 3], [4, 2, 2, 3], {"group": 4, "dilations": [2, 2], "strides": [1, 2]}),
}


# onnx's ReferenceEvaluator is wrong for grouped ConvTranspose: torch in float64 is the oracle.
@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("case", GROUPED_TRANSPOSE_CASES.values(), ids=GROUPED_TRANSPOSE_CASES.keys())
def test_conv_transpose_groups(case, dims):
    x_shape, w_shape, attrs = case
    check_adjoint(conv_text("ConvTranspose", x_shape, w_shape, attrs), ["x"],
                  oracle=torch_conv_transpose_oracle(attrs), sizes=spatial_sizes(dims, x_shape))


@pytest.mark.parametrize("attrs", [{"auto_pad": "SAME_UPPER", "strides": [2, 2]},
                                   {"auto_pad": "SAME_LOWER"},
                                   {"output_shape": [8, 8], "strides": [2, 2]}],
                         ids=["same_upper", "same_lower", "output_shape"])
def test_conv_transpose_rejects_implicit_shapes(attrs):
    text = conv_text("ConvTranspose", [1, 2, 4, 4], [2, 2, 3, 3], attrs)
    with pytest.raises(ValueError, match="ConvTranspose node .*auto_pad SAME_\\* and output_shape"):
        gradient_model(parse(text), ["x"])


def test_weights_not_differentiated():
    with pytest.raises(ValueError, match="only activations"):
        gradient_model(parse(conv_text("Conv", [1, 2, 5, 5], [3, 2, 3, 3], {})), ["x", "w"])


@pytest.mark.parametrize("text", [
    conv_text("Conv", [1, 2, 9, 8], [3, 2, 3, 3], {"strides": [2, 2], "pads": [0, 2, 1, 0]}),
    conv_text("Conv", [1, 2, 8, 8], [3, 2, 3, 3], {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    model_text("y = AveragePool<kernel_shape=[3,3], strides=[2,2], pads=[0,1,2,1]>(x)", "float[1,2,8,8] x",
               "float[?,?,?,?] y"),
], ids=["conv", "conv_same_lower", "average_pool"])
def test_conv_transpose_pads_are_symmetric(text):
    """ONNX Runtime's CUDA ConvTranspose rejects asymmetric pads; the rules crop with a Slice instead."""
    grads = gradient_model(parse(text), ["x"])
    transposes = [n for n in grads.graph.node if n.op_type == "ConvTranspose"]
    assert transposes, "the gradient has no ConvTranspose: the test exercises nothing"
    for node in transposes:
        pads = next((list(onnx.helper.get_attribute_value(a)) for a in node.attribute if a.name == "pads"), [])
        assert pads[: len(pads) // 2] == pads[len(pads) // 2:], f"asymmetric ConvTranspose pads {pads}"
