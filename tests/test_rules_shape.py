"""Adjoint checks for the rules of ops that move or copy elements: reshapes, transposes, depth/space, Expand, Tile."""

import numpy as np
import pytest

from adjoint import DIMS, check_adjoint, model_text, spatial_sizes


def _ints(name, values):
    return f"{name} = Constant<value = int64[{len(values)}] {{{', '.join(map(str, values))}}}>()"


@pytest.mark.parametrize("shape, out, allowzero", [
    ([2, 3, 4], [0, -1], 0),          # 0 copies a dim, -1 infers one
    ([2, 3, 4], [4, -1, 2], 0),
    ([2, 3, 4], [4, 3, 2], 1),        # allowzero with no zero in the shape
    ([2, 3, 4], [24], 0),
])
def test_reshape(shape, out, allowzero):
    y = list(np.empty(shape).reshape([d if d else shape[i] for i, d in enumerate(out)]).shape)
    text = model_text(f"{_ints('s', out)}\n y = Reshape<allowzero = {allowzero}>(x, s)",
                      f"float{shape} x".replace(" ", ""), f"float{y} y".replace(" ", ""))
    check_adjoint(text, ["x"])


def test_reshape_symbolic_batch():
    text = model_text(f"{_ints('s', [0, -1])}\n y = Reshape(x, s)", "float[N,3,4] x", "float[N,12] y")
    check_adjoint(text, ["x"], inputs={"x": np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)})


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_flatten(axis):
    shape = (2, 3, 4)
    split = axis % 3
    y = [int(np.prod(shape[:split])), int(np.prod(shape[split:]))]
    check_adjoint(model_text(f"y = Flatten<axis = {axis}>(x)", "float[2,3,4] x", f"float[{y[0]},{y[1]}] y"), ["x"])


@pytest.mark.parametrize("axes, y", [([1], "[2,4,1]"), ([-1], "[2,1,4]"), ([1, -1], "[2,4]"), (None, "[2,4]")])
def test_squeeze(axes, y):
    body = f"{_ints('a', axes)}\n y = Squeeze(x, a)" if axes else "y = Squeeze(x)"
    check_adjoint(model_text(body, "float[2,1,4,1] x", f"float{y} y"), ["x"])


@pytest.mark.parametrize("axes, y", [
    ([0], "[1,2,3]"), ([-1], "[2,3,1]"), ([1, 3], "[2,1,3,1]"), ([-1, 0], "[1,2,3,1]"),
])
def test_unsqueeze(axes, y):
    check_adjoint(model_text(f"{_ints('a', axes)}\n y = Unsqueeze(x, a)", "float[2,3] x", f"float{y} y"), ["x"])


@pytest.mark.parametrize("perm", [[0, 2, 3, 1], [2, 0, 3, 1], None])
def test_transpose(perm):
    shape = [2, 3, 4, 5]
    order = perm or [3, 2, 1, 0]
    y = str([shape[i] for i in order]).replace(" ", "")
    attrs = f"<perm = {perm}>".replace(" ", "") if perm else ""
    check_adjoint(model_text(f"y = Transpose{attrs}(x)", "float[2,3,4,5] x", f"float{y} y"), ["x"])


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("dims", DIMS)
def test_depth_to_space(mode, dims):
    text = model_text(f'y = DepthToSpace<blocksize = 2, mode = "{mode}">(x)', "float[2,12,3,4] x", "float[2,3,6,8] y")
    sizes = spatial_sizes(dims, [2, 12, 3, 4])
    vjp = check_adjoint(text, ["x"], sizes=sizes)["x"]
    assert vjp.shape == (2, 12, *(sizes[-1] if sizes else [3, 4]))


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space_symbolic_batch_and_size(mode):
    text = model_text(f'y = DepthToSpace<blocksize = 3, mode = "{mode}">(x)', "float[N,18,H,W] x", "float[N,2,A,B] y")
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal(shape).astype(np.float32)} for shape in [(2, 18, 2, 3), (1, 18, 5, 4)]]
    check_adjoint(text, ["x"], inputs=feeds)


def test_depth_to_space_crd_symbolic_channels():
    # The channel count is read at run time too: one gradient model for every channel count.
    text = model_text('y = DepthToSpace<blocksize = 2, mode = "CRD">(x)', "float[N,C,H,W] x", "float[?,?,?,?] y")
    rng = np.random.default_rng(4)
    feeds = [{"x": rng.standard_normal(shape).astype(np.float32)} for shape in [(2, 8, 3, 2), (1, 12, 2, 5)]]
    check_adjoint(text, ["x"], inputs=feeds)


@pytest.mark.parametrize("dims", DIMS)
def test_space_to_depth(dims):
    # Its sizes must be multiples of the block size.
    check_adjoint(model_text("y = SpaceToDepth<blocksize = 2>(x)", "float[2,3,4,6] x", "float[2,12,2,3] y"), ["x"],
                  sizes=[[4, 6], [10, 2]] if dims == "symbolic" else None)


@pytest.mark.parametrize("x, shape, y", [
    ("[3,1]", [2, 3, 4], "[2,3,4]"),
    ("[1,4]", [3, 1], "[3,4]"),       # the shape's 1 keeps x's dim
    ("[2,3,4]", [1], "[2,3,4]"),      # no broadcasting at all
    ("[4]", [2, 1, 4], "[2,1,4]"),
])
def test_expand(x, shape, y):
    check_adjoint(model_text(f"{_ints('s', shape)}\n y = Expand(x, s)", f"float{x} x", f"float{y} y"), ["x"])


def test_expand_symbolic_batch():
    text = model_text(f"{_ints('s', [1, 3, 4])}\n y = Expand(x, s)", "float[N,1,4] x", "float[N,3,4] y")
    check_adjoint(text, ["x"], inputs={"x": np.random.default_rng(2).standard_normal((2, 1, 4)).astype(np.float32)})


@pytest.mark.parametrize("x, repeats, y", [
    ("[2,3]", [2, 3], "[4,9]"),
    ("[2,1,3]", [1, 4, 2], "[2,4,6]"),
    ("[5]", [1], "[5]"),
])
def test_tile(x, repeats, y):
    check_adjoint(model_text(f"{_ints('r', repeats)}\n y = Tile(x, r)", f"float{x} x", f"float{y} y"), ["x"])


def test_tile_runtime_repeats_symbolic_batch():
    text = model_text("y = Tile(x, r)", "float[N,3] x, int64[2] r", "float[A,B] y")
    rng = np.random.default_rng(3)
    check_adjoint(text, ["x"], inputs={"x": rng.standard_normal((2, 3)).astype(np.float32),
                                       "r": np.array([3, 2], np.int64)})
