"""Adjoint checks for the rules of ops that select, join or cut: Concat, Split, Slice, Gather*, Pad."""

import numpy as np
import pytest

from adjoint import DIMS, check_adjoint, model_text, spatial_sizes

RNG = np.random.default_rng(0)


def _ints(name, values):
    return f"{name} = Constant<value = int64[{len(values)}] {{{', '.join(map(str, values))}}}>()"


def _dims(shape):
    """ONNX text for a shape; a rank-0 tensor is written with no brackets."""
    return str(list(shape)).replace(" ", "") if len(shape) else ""


def _normal(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# --- Concat and Split --------------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, -1, -2])
def test_concat(axis):
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    sizes = {0: [2, 1, 3], 1: [3, 1, 2], 2: [4, 1, 2]}[axis % 3]
    for shape, size in zip(shapes, sizes):
        shape[axis % 3] = size
    y = list(shapes[0])
    y[axis % 3] = sum(sizes)
    inputs = ", ".join(f"float{_dims(shape)} {name}" for shape, name in zip(shapes, "abc"))
    check_adjoint(model_text(f"y = Concat<axis = {axis}>(a, b, c)", inputs, f"float{_dims(y)} y"), ["a", "b", "c"])


def test_concat_only_some_inputs_want_gradients():
    text = model_text("y = Concat<axis = 1>(a, b, c)", "float[2,3] a, float[2,1] b, float[2,2] c", "float[2,6] y")
    check_adjoint(text, ["a", "c"])


@pytest.mark.parametrize("axis", [0, 1])
def test_concat_symbolic_batch(axis):
    text = model_text(f"y = Concat<axis = {axis}>(a, b)", "float[N,3] a, float[M,3] b", "float[P,Q] y")
    b = _normal(2, 3) if axis == 0 else _normal(3, 3)
    check_adjoint(text, ["a", "b"], inputs={"a": _normal(3, 3), "b": b})


def test_concat_single_input():
    check_adjoint(model_text("y = Concat<axis = 0>(a)", "float[2,3] a", "float[2,3] y"), ["a"])


@pytest.mark.parametrize("axis", [1, -1])
def test_split_sizes_input_some_outputs_unused(axis):
    body = f"{_ints('s', [1, 2, 3])}\n p, q, r = Split<axis = {axis}>(x, s)\n y = Concat<axis = {axis}>(r, p)"
    check_adjoint(model_text(body, "float[2,6] x", "float[2,4] y"), ["x"])


def test_split_num_outputs_uneven():
    # num_outputs = 3 over 7 elements gives sizes 3, 3, 1; the middle output is not used.
    body = "p, q, r = Split<axis = 0, num_outputs = 3>(x)\n t = Slice(p, s0, s1)\n y = Mul(t, r)"
    body = f"{_ints('s0', [2])}\n{_ints('s1', [3])}\n{body}"
    check_adjoint(model_text(body, "float[7,2] x", "float[1,2] y", opset=18), ["x"])


def test_split_single_output_used():
    body = "p, q = Split<axis = 1, num_outputs = 2>(x)"
    check_adjoint(model_text(body, "float[N,4] x", "float[N,2] q"), ["x"], inputs={"x": _normal(3, 4)})


# --- Slice -------------------------------------------------------------------------------------------------

SLICES = {
    "crop": ([1], [3], [1], None),
    "negative starts, ends past the end": ([-3, 0], [-1, 100], [2, -1], None),
    "all axes omitted": ([1, 0, 2], [2, 2, 4], None, None),
    "step 2": ([0], [5], [2], [2]),
    "negative step": ([-1], [-100], [2], [-2]),
    "negative step, partial": ([3, 2], [0, 0], [1, 3], [-1, -1]),
    "mixed steps": ([0, 4, 1], [2, -6, 100], [0, 2, 3], [1, -3, 2]),
}


def _numpy_slice(x, starts, ends, axes, steps):
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        size = x.shape[axis]
        if step < 0 and end < -size:
            end = None  # numpy reads an end below -size as "from the end", ONNX clamps it to -1: before index 0
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("starts, ends, axes, steps", list(SLICES.values()), ids=list(SLICES))
def test_slice(starts, ends, axes, steps, dims):
    y = _numpy_slice(np.empty((2, 3, 5, 4)), starts, ends, axes, steps).shape
    consts = [_ints("b", starts), _ints("e", ends)]
    args = "x, b, e"
    if axes is not None or steps is not None:
        consts.append(_ints("a", axes if axes is not None else list(range(len(starts)))))
        args += ", a"
    if steps is not None:
        consts.append(_ints("k", steps))
        args += ", k"
    body = "\n".join(consts) + f"\n y = Slice({args})"
    check_adjoint(model_text(body, "float[2,3,5,4] x", f"float{_dims(y)} y"), ["x"],
                  sizes=spatial_sizes(dims, [2, 3, 5, 4]))


def test_slice_runtime_starts_symbolic_batch():
    text = model_text(f"{_ints('a', [1])}\n y = Slice(x, b, e, a)", "float[N,6] x, int64[1] b, int64[1] e",
                      "float[N,K] y")
    check_adjoint(text, ["x"], inputs={"x": _normal(3, 6), "b": np.array([-4]), "e": np.array([5])})


def test_slice_symbolic_batch_constant_crop():
    body = f"{_ints('b', [1, 0])}\n{_ints('e', [-1, 2])}\n{_ints('a', [2, 1])}\n y = Slice(x, b, e, a)"
    check_adjoint(model_text(body, "float[N,3,5] x", "float[N,2,3] y"), ["x"], inputs={"x": _normal(2, 3, 5)})


def test_slice_symbolic_sizes_runtime_ends():
    # Constant starts and unit steps make it a crop whatever the ends: one gradient model for every size and end.
    body = f"{_ints('b', [1, -4])}\n{_ints('a', [2, 3])}\n y = Slice(x, b, e, a)"
    text = model_text(body, "float[N,3,H,W] x, int64[2] e", "float[?,?,?,?] y")
    feeds = [{"x": _normal(2, 3, 9, 11), "e": np.array([-1, 100])},
             {"x": _normal(1, 3, 16, 13), "e": np.array([7, -2])}]
    check_adjoint(text, ["x"], inputs=feeds)


# --- Gather ------------------------------------------------------------------------------------------------

GATHERS = {
    "axis 0": (0, [2, 0], "[2,4,5]"),
    "axis 1, negative and repeated indices": (1, [-1, 0, -1, 2], "[3,4,5]"),
    "axis -1": (-1, [4, 1], "[3,4,2]"),
    "scalar index drops the axis": (1, 2, "[3,5]"),
    "indices of rank 2": (2, [[0, 1, 1], [4, -5, 3]], "[3,4,2,3]"),
}


@pytest.mark.parametrize("axis, indices, y", list(GATHERS.values()), ids=list(GATHERS))
def test_gather(axis, indices, y):
    text = model_text(f"y = Gather<axis = {axis}>(x, i)", f"float[3,4,5] x, int64{_dims(np.shape(indices))} i",
                      f"float{y} y")
    check_adjoint(text, ["x"], inputs={"i": np.array(indices, np.int64)})


def test_gather_symbolic_batch():
    text = model_text("y = Gather<axis = 1>(x, i)", "float[N,4] x, int64[3] i", "float[N,3] y")
    check_adjoint(text, ["x"], inputs={"x": _normal(2, 4), "i": np.array([3, 3, -4], np.int64)})


@pytest.mark.parametrize("batch_dims, indices, y", [
    (0, [[0, 1], [2, 3], [0, 1]], "[3,5]"),     # repeated rows
    (0, [[2], [-1]], "[2,4,5]"),
    (1, [[1, 4], [0, 0], [3, 2]], "[3]"),
])
def test_gather_nd(batch_dims, indices, y):
    text = model_text(f"y = GatherND<batch_dims = {batch_dims}>(x, i)",
                      f"float[3,4,5] x, int64{_dims(np.shape(indices))} i", f"float{y} y")
    check_adjoint(text, ["x"], inputs={"i": np.array(indices, np.int64)})


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(axis):
    shape = [3, 4, 5]
    index_shape = list(shape)
    index_shape[axis] = 6
    size = shape[axis]
    indices = np.random.default_rng(1).integers(-size, size, index_shape)  # negative and repeated
    text = model_text(f"y = GatherElements<axis = {axis}>(x, i)", f"float[3,4,5] x, int64{_dims(index_shape)} i",
                      f"float{_dims(index_shape)} y")
    # onnx's reference GatherElements mishandles a negative axis: numpy is the oracle.
    oracle = lambda feeds: np.take_along_axis(feeds["x"], feeds["i"] % size, axis)  # noqa: E731
    check_adjoint(text, ["x"], inputs={"i": indices}, oracle=oracle)


# --- Pad ---------------------------------------------------------------------------------------------------

PADS = {
    "all axes": ([0, 1, 2, 1, 0, 0, 1, 3], None),
    "axes input": ([2, 1, 1, 3], [2, -1]),
    "negative pads crop": ([0, 0, -1, 2, 0, 0, 1, -2], None),
    "axes input, negative": ([-1, 1, 2, -1], [-1, 2]),
}


def _pad_oracle(mode, pads, axes):
    """Pad in numpy (onnx's reference Pad rejects negative pads): crop by the negative pads, pad by the others."""
    def pad(feeds):
        x = feeds["x"]
        half = len(pads) // 2
        widths = [[0, 0] for _ in range(x.ndim)]
        for axis, begin, end in zip(axes if axes is not None else range(x.ndim), pads[:half], pads[half:]):
            widths[axis] = [begin, end]
        x = x[tuple(slice(max(0, -b), x.shape[i] - max(0, -e)) for i, (b, e) in enumerate(widths))]
        positive = [[max(0, b), max(0, e)] for b, e in widths]
        if mode == "constant":
            return np.pad(x, positive, constant_values=feeds.get("v", 0.0))
        return np.pad(x, positive, mode={"edge": "edge", "reflect": "reflect", "wrap": "wrap"}[mode])
    return pad


def _pad_model(mode, pads, axes, with_value=False, shape=(2, 3, 4, 5)):
    y = list(shape)
    half = len(pads) // 2
    for axis, begin, end in zip(axes if axes is not None else range(len(shape)), pads[:half], pads[half:]):
        y[axis] += begin + end
    consts = [_ints("p", pads)]
    args = "x, p"
    if with_value or axes is not None:
        args += ", v" if with_value else ", "
    if axes is not None:
        consts.append(_ints("a", axes))
        args += ", a"
    inputs = f"float{_dims(shape)} x" + (", float v" if with_value else "")
    return model_text("\n".join(consts) + f'\n y = Pad<mode = "{mode}">({args})', inputs, f"float{_dims(y)} y")


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("pads, axes", list(PADS.values()), ids=list(PADS))
@pytest.mark.parametrize("mode", ["constant", "edge", "reflect"])
def test_pad(mode, pads, axes, dims):
    check_adjoint(_pad_model(mode, pads, axes), ["x"], oracle=_pad_oracle(mode, pads, axes),
                  sizes=spatial_sizes(dims, [2, 3, 4, 5]))


def test_pad_constant_value_gets_its_gradient():
    pads = [0, 1, 2, 1, 0, 0, 1, -3]
    check_adjoint(_pad_model("constant", pads, None, with_value=True), ["x", "v"],
                  inputs={"v": np.array(0.5, np.float32)}, oracle=_pad_oracle("constant", pads, None))


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("pads, axes", [([1, 2, 3, 0], [1, 2]), ([0, 0, 1, 4, 0, 0, 3, 2], None)])
def test_pad_wrap(pads, axes, dims):
    # Pad wraps from opset 19; pads larger than half the size wrap twice over the same elements.
    text = _pad_model("wrap", pads, axes).replace('"" : 20', '"" : 19')
    check_adjoint(text, ["x"], sizes=spatial_sizes(dims, [2, 3, 4, 5]))


def test_pad_runtime_pads_symbolic_batch():
    text = model_text('y = Pad<mode = "reflect">(x, p, , a)', "float[N,3,5] x, int64[2] p, int64[1] a",
                      "float[N,3,K] y")
    check_adjoint(text, ["x"], inputs={"x": _normal(2, 3, 5), "p": np.array([2, 1]), "a": np.array([-1])})
