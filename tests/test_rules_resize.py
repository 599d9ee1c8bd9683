"""Adjoint checks for Resize: nearest, linear and cubic modes, every coordinate transformation, scales or sizes,
up- and downsampling, NCHW and NHWC, and agreement with ONNX Runtime's own forward Resize."""

import numpy as np
import onnxruntime as ort
import pytest

from onnx.reference import ReferenceEvaluator

from adjoint import DIMS, check_adjoint, model_text, parse, to_float64, with_symbolic_sizes
from onnx_gradcam.autodiff import gradient_model

X_SHAPE = [2, 3, 4, 8]


def _sizes(dims):
    """check_adjoint's ``sizes`` for a test over DIMS. The second size doubles X_SHAPE's, so that every scale and
    sizes ratio below stays exact in binary and every length x scale an integer (where it is none, onnx's reference
    takes it unrounded in align_corners and half_pixel_symmetric, ONNX Runtime the output length)."""
    return None if dims == "static" else [X_SHAPE[2:], [2 * d for d in X_SHAPE[2:]]]


def _floats(name, values):
    return f"{name} = Constant<value = float[{len(values)}] {{{', '.join(map(str, values))}}}>()"


def _ints(name, values):
    return f"{name} = Constant<value = int64[{len(values)}] {{{', '.join(map(str, values))}}}>()"


def _resize_model(attrs: str, scales=None, sizes=None, roi=None, shape=X_SHAPE, axes=None) -> str:
    """A model y = Resize(x) with constant scales or sizes (and roi); the output shape is left to inference."""
    consts, roi_arg = [], ""
    if roi is not None:
        consts.append(_floats("roi", roi))
        roi_arg = "roi"
    if scales is not None:
        consts.append(_floats("sc", scales))
        args = f"x, {roi_arg}, sc"
    else:
        consts.append(_ints("sz", sizes))
        args = f"x, {roi_arg}, , sz"
    if axes is not None:
        attrs += f", axes = {axes}"
    body = "\n".join(consts) + f"\n y = Resize<{attrs}>({args})"
    dims = ",".join(map(str, shape))
    out = ",".join(f"d{i}" for i in range(len(shape)))
    return model_text(body, f"float[{dims}] x", f"float[{out}] y")


def _runtime_adjoint(text: str, x_shape=X_SHAPE, seed: int = 0, sizes=None):
    """Resize is linear (affine with an extrapolation value), so <Resize(u) - Resize(0), v> = <u, VJP(v)> holds
    to float32 rounding for ONNX Runtime's own forward pass: no finite differences, no other implementation.
    ``sizes``: as in check_adjoint, one gradient model of symbolic spatial dims checked at each of them."""
    model = parse(text) if sizes is None else with_symbolic_sizes(parse(text), ["x"])
    session = ort.InferenceSession(gradient_model(model, ["x"]).SerializeToString(), providers=["CPUExecutionProvider"])
    forward = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    for shape in [x_shape] if sizes is None else [list(x_shape[:2]) + list(size) for size in sizes]:
        u = rng.standard_normal(shape).astype(np.float32)
        y = forward.run(None, {"x": u})[0] - forward.run(None, {"x": np.zeros_like(u)})[0]
        v = rng.standard_normal(y.shape).astype(np.float32)
        vjp = session.run(["grad/x"], {"x": u, "seed": v})[0]
        lhs, rhs = float(np.sum(y.astype(np.float64) * v)), float(np.sum(u.astype(np.float64) * vjp))
        scale = float(np.sum(np.abs(y * v)))
        assert abs(lhs - rhs) <= 1e-5 * scale, f"<Resize(u), v> = {lhs}, <u, VJP(v)> = {rhs} at x of shape {shape}"


# Up- and downsampling, by scales and by sizes. The ratios are not integers but are exact in binary, so that
# onnx's float64 reference and ONNX Runtime's float32 land on the same pixel when a sample falls exactly on one
# or halfway between two (as 0.75 and sizes 4 -> 2 make them do, where the nearest modes differ).
SPECS = {
    "scales up": dict(scales=[1, 1, 1.75, 1.5]),
    "scales down": dict(scales=[1, 1, 0.75, 0.375]),
    "sizes up": dict(sizes=[2, 3, 5, 14]),
    "sizes down": dict(sizes=[2, 3, 2, 5]),
}
NEAREST_MODES = ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]
TRANSFORMS = ["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "half_pixel_symmetric"]


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
def test_nearest(nearest_mode, transform, spec, dims):
    attrs = f'mode = "nearest", nearest_mode = "{nearest_mode}", coordinate_transformation_mode = "{transform}"'
    text = _resize_model(attrs, **spec)
    check_adjoint(text, ["x"], sizes=_sizes(dims))
    _runtime_adjoint(text, sizes=_sizes(dims))


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("spec", list(SPECS.values()), ids=list(SPECS))
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_linear(transform, spec, dims):
    text = _resize_model(f'mode = "linear", coordinate_transformation_mode = "{transform}"', **spec)
    check_adjoint(text, ["x"], sizes=_sizes(dims))
    _runtime_adjoint(text, sizes=_sizes(dims))


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("transform", ["pytorch_half_pixel", "align_corners"])
@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_output_length_one(mode, transform, dims):
    # Both transformations sample x[0] where the output length is 1.
    text = _resize_model(f'mode = "{mode}", coordinate_transformation_mode = "{transform}"', sizes=[2, 3, 1, 4])
    check_adjoint(text, ["x"], sizes=_sizes(dims))
    _runtime_adjoint(text, sizes=_sizes(dims))


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("spec", [dict(scales=[1, 1, 2, 1.5]), dict(sizes=[2, 3, 3, 4])], ids=["up", "down"])
@pytest.mark.parametrize("exclude_outside", [0, 1])
def test_cubic(exclude_outside, spec, dims):
    attrs = f'mode = "cubic", cubic_coeff_a = -0.5, exclude_outside = {exclude_outside}'
    text = _resize_model(attrs, **spec)
    check_adjoint(text, ["x"], sizes=_sizes(dims))
    _runtime_adjoint(text, sizes=_sizes(dims))


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_antialias_downsampling(mode, dims):
    text = _resize_model(f'mode = "{mode}", antialias = 1', sizes=[2, 3, 2, 4])
    check_adjoint(text, ["x"], sizes=_sizes(dims))
    _runtime_adjoint(text, sizes=_sizes(dims))


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("mode", ["linear", "nearest"])
def test_tf_crop_and_resize(mode, dims):
    # Samples outside the roi take extrapolation_value, a constant: no gradient reaches x from them.
    attrs = f'mode = "{mode}", coordinate_transformation_mode = "tf_crop_and_resize", extrapolation_value = 2.0'
    text = _resize_model(attrs, sizes=[2, 3, 3, 7], roi=[0, 0, 0.2, -0.1, 1, 1, 0.9, 1.3])
    check_adjoint(text, ["x"], sizes=_sizes(dims))
    _runtime_adjoint(text, sizes=_sizes(dims))


def test_tf_crop_and_resize_follows_the_runtime_at_scale_one():
    # ONNX Runtime ignores the roi of an axis whose scale is 1 (onnx's reference crops it): the gradient
    # follows the runtime, and needs no static size for such an axis (here the batch).
    attrs = 'mode = "linear", coordinate_transformation_mode = "tf_crop_and_resize"'
    roi = [0, 0, 0.2, -0.1, 1, 1, 0.9, 1.3]
    _runtime_adjoint(_resize_model(attrs, sizes=[2, 3, 4, 7], roi=roi))
    symbolic = _resize_model(attrs, scales=[1, 1, 1, 1.5], roi=roi).replace("float[2,3,4,8] x", "float[N,3,4,8] x")
    _runtime_adjoint(symbolic)


def _nearest_oracle(scales, nearest_mode):
    """tf_half_pixel_for_nn (onnx's reference Resize does not implement it): index round((o + 0.5) / scale)."""
    rounding = {"round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil": lambda v: np.floor(v + 0.5),
                "floor": np.floor, "ceil": np.ceil}[nearest_mode]

    def resize(feeds):
        x = feeds["x"]
        for axis, scale in enumerate(scales):
            length = int(np.floor(x.shape[axis] * scale))
            if scale != 1:
                index = rounding((np.arange(length) + 0.5) / scale).astype(int)
                x = np.take(x, np.clip(index, 0, x.shape[axis] - 1), axis=axis)
        return x
    return resize


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("nearest_mode", NEAREST_MODES)
@pytest.mark.parametrize("scales", [[1, 1, 2, 1.5], [1, 1, 0.75, 0.5], [1, 1, 1, 2]], ids=["up", "down", "one axis"])
def test_tf_half_pixel_for_nn(nearest_mode, scales, dims):
    # Deprecated since opset 13, but ONNX Runtime still runs it (and logs a warning).
    attrs = (f'mode = "nearest", nearest_mode = "{nearest_mode}", '
             'coordinate_transformation_mode = "tf_half_pixel_for_nn"')
    text = _resize_model(attrs, scales=scales)
    check_adjoint(text, ["x"], oracle=_nearest_oracle(scales, nearest_mode), sizes=_sizes(dims))
    _runtime_adjoint(text, sizes=_sizes(dims))


NHWC = {
    "scales on all axes": dict(scales=[1, 2, 1.5, 1]),
    "axes attribute": dict(scales=[0.75, 2], axes=[1, 2]),
    "negative axes, sizes": dict(sizes=[3, 9], axes=[-3, -2]),
}


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("mode", ["linear", "nearest"])
@pytest.mark.parametrize("spec", list(NHWC.values()), ids=list(NHWC))
def test_nhwc(mode, spec, dims):
    attrs, shape = f'mode = "{mode}"', [2, 4, 6, 3]
    sizes = None if dims == "static" else [shape[2:], [2 * d for d in shape[2:]]]  # as _sizes: ratios stay exact
    text = _resize_model(attrs, shape=shape, **spec)
    # onnx's reference Resize fails on negative axes: the oracle is the same model with the axes made positive.
    positive = dict(spec, axes=[a % 4 for a in spec["axes"]]) if "axes" in spec else spec
    evaluator = ReferenceEvaluator(to_float64(with_symbolic_sizes(parse(_resize_model(attrs, shape=shape, **positive)),
                                                                  ["x"])))
    check_adjoint(text, ["x"], oracle=lambda feeds: evaluator.run(None, feeds)[0], sizes=sizes)
    _runtime_adjoint(text, x_shape=shape, sizes=sizes)


def test_three_dimensional_input_middle_axis():
    text = _resize_model('mode = "linear"', shape=[4, 5, 3], scales=[1, 1.6, 1])
    check_adjoint(text, ["x"])


def test_nearest_follows_the_runtime_where_rounding_decides():
    # At scale 0.6 (inexact in binary) the sample of output row 1 lands a rounding error away from input row 2:
    # ONNX Runtime picks row 2 with mode floor, onnx's float64 reference row 1. The gradient follows the runtime.
    attrs = 'mode = "nearest", nearest_mode = "floor", coordinate_transformation_mode = "half_pixel"'
    _runtime_adjoint(_resize_model(attrs, scales=[1, 1, 0.6, 0.5], shape=[2, 3, 5, 6]), x_shape=[2, 3, 5, 6])


def test_symbolic_batch():
    text = model_text(f"{_floats('sc', [1, 1, 2, 0.5])}\n y = Resize<mode = \"linear\">(x, , sc)",
                      "float[N,3,4,8] x", "float[N,3,8,4] y")
    check_adjoint(text, ["x"], inputs={"x": np.random.default_rng(1).standard_normal(X_SHAPE).astype(np.float32)})


def test_empty_roi_and_scales_beside_sizes():
    # The form exporters write for opsets 11 to 12: empty roi and scales, then sizes.
    body = ("e = Constant<value = float[0] {}>()\n" + _ints("sz", [2, 3, 7, 5])
            + '\n y = Resize<mode = "linear", coordinate_transformation_mode = "asymmetric">(x, e, e, sz)')
    check_adjoint(model_text(body, "float[2,3,4,8] x", "float[2,3,7,5] y"), ["x"])


def test_keep_aspect_ratio_policy_is_refused():
    text = _resize_model('mode = "linear", keep_aspect_ratio_policy = "not_larger"', sizes=[7, 9], axes=[2, 3])
    with pytest.raises(ValueError, match="keep_aspect_ratio_policy"):
        gradient_model(parse(text), ["x"])


def test_runtime_scales_are_refused():
    text = model_text('y = Resize<mode = "linear">(x, , sc)', "float[2,3,5,6] x, float[4] sc", "float[2,3,A,B] y")
    with pytest.raises(ValueError, match="scales"):
        gradient_model(parse(text), ["x"])


def test_sizes_computed_at_run_time():
    # What torch.onnx writes for F.interpolate(size=...) under a dynamic batch: sizes = Concat(Shape(x)[:2], [H, W]).
    # The resized lengths are read from the inferred output shape.
    body = (_ints("hw", [7, 5]) + "\n lead = Shape<start = 0, end = 2>(x)\n sz = Concat<axis = 0>(lead, hw)"
            '\n y = Resize<mode = "linear">(x, , , sz)')
    text = model_text(body, "float[N,3,4,8] x", "float[N,3,7,5] y")
    check_adjoint(text, ["x"], inputs={"x": np.random.default_rng(1).standard_normal(X_SHAPE).astype(np.float32)})


def test_sizes_fed_at_run_time():
    # The output lengths are unknown when the model is built: the gradient reads them from the output's shape.
    text = model_text('y = Resize<mode = "linear">(x, , , sz)', "float[2,3,5,6] x, int64[4] sz", "float[2,3,A,B] y")
    check_adjoint(text, ["x"], inputs=[{"sz": np.array(sizes)} for sizes in ([2, 3, 7, 4], [2, 3, 3, 9])])


@pytest.mark.parametrize("transform", ["half_pixel", "align_corners", "asymmetric"])
def test_sizes_follow_the_input_size(transform):
    # Upsampling by 2 to the size read from x at run time, as exporters write F.interpolate(size=(2h, 2w)) of a
    # model of symbolic sizes: one gradient model for every input size.
    body = (_ints("two", [2]) + "\n lead = Shape<start = 0, end = 2>(x)\n hw = Shape<start = 2>(x)"
            + "\n twice = Mul(hw, two)\n sz = Concat<axis = 0>(lead, twice)"
            + f'\n y = Resize<mode = "linear", coordinate_transformation_mode = "{transform}">(x, , , sz)')
    text = model_text(body, "float[N,3,H,W] x", "float[N,3,A,B] y")
    rng = np.random.default_rng(2)
    feeds = [{"x": rng.standard_normal(shape).astype(np.float32)} for shape in [(2, 3, 9, 11), (1, 3, 16, 13)]]
    check_adjoint(text, ["x"], inputs=feeds)
