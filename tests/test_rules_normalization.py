"""Adjoint checks for BatchNormalization (inference), Layer/Instance/GroupNormalization and LRN."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from adjoint import check_adjoint, model_text, parse, to_float64
from onnx_gradcam.autodiff import gradient_model


def _dims(shape):
    return str(list(shape)).replace(" ", "")


def _floats(values):
    return "{" + ", ".join(f"{v:.6f}" for v in values) + "}"


def _channel_constants(channels, rng):
    """BatchNormalization's scale, bias, mean and (positive) variance as initializer text."""
    values = {"scale": rng.normal(0, 1, channels), "bias": rng.normal(0, 1, channels),
              "mean": rng.normal(0, 1, channels), "var": rng.uniform(0.2, 2.0, channels)}
    return ", ".join(f"float[{channels}] {k} = {_floats(v)}" for k, v in values.items())


@pytest.mark.parametrize("epsilon", [1e-5, 0.3])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 5), (2, 3, 4, 5)], ids=lambda s: f"rank{len(s)}")
def test_batch_normalization(shape, epsilon):
    inits = _channel_constants(shape[1], np.random.default_rng(1))
    text = model_text(f"y = BatchNormalization<epsilon: float = {epsilon}>(x, scale, bias, mean, var)",
                      f"float{_dims(shape)} x", f"float{_dims(shape)} y", initializers=inits)
    check_adjoint(text, ["x"])


def test_batch_normalization_symbolic_batch():
    inits = _channel_constants(3, np.random.default_rng(2))
    text = model_text("y = BatchNormalization(x, scale, bias, mean, var)", "float[N,3,4,4] x", "float[N,3,4,4] y",
                      initializers=inits)
    check_adjoint(text, ["x"], inputs={"x": np.random.default_rng(3).standard_normal((2, 3, 4, 4), np.float32)})


def test_batch_normalization_rejects_varying_scale():
    text = model_text("y = BatchNormalization(x, s, b, m, v)",
                      "float[2,3,4] x, float[3] s, float[3] b, float[3] m, float[3] v", "float[2,3,4] y")
    with pytest.raises(ValueError, match="BatchNormalization node .*scale, bias, mean and variance"):
        gradient_model(parse(text), ["x", "s"])


def test_batch_normalization_rejects_training_mode():
    text = model_text("y = BatchNormalization<training_mode: int = 1>(x, s, b, m, v)",
                      "float[2,3,4] x, float[3] s, float[3] b, float[3] m, float[3] v", "float[2,3,4] y")
    with pytest.raises(ValueError, match="training mode"):
        gradient_model(parse(text), ["x"])


LAYER_NORM_CASES = [(-1, 1e-5, True), (-2, 1e-5, True), (1, 0.5, True), (3, 1e-5, False), (0, 1e-5, False)]


@pytest.mark.parametrize("axis,epsilon,bias", LAYER_NORM_CASES, ids=lambda c: str(c))
def test_layer_normalization(axis, epsilon, bias):
    shape = (2, 3, 4, 5)
    param = _dims(shape[axis:])
    inputs = f"float{_dims(shape)} x, float{param} s" + (f", float{param} b" if bias else "")
    call = "x, s, b" if bias else "x, s"
    text = model_text(f"y = LayerNormalization<axis: int = {axis}, epsilon: float = {epsilon}>({call})",
                      inputs, f"float{_dims(shape)} y")
    check_adjoint(text, ["x"])


def test_layer_normalization_with_statistics_outputs():
    # Mean and InvStdDev are produced (as some exporters write them) but carry no gradient.
    text = model_text("y, m, inv = LayerNormalization<axis: int = -1>(x, s, b)",
                      "float[2,3,6] x, float[6] s, float[6] b", "float[2,3,6] y")
    check_adjoint(text, ["x"])


def test_layer_normalization_rejects_gradient_into_mean():
    text = model_text("n, m = LayerNormalization<axis: int = -1>(x, s)\n y = Add(n, m)",
                      "float[2,3,6] x, float[6] s", "float[2,3,6] y")
    with pytest.raises(ValueError, match="LayerNormalization node .*statistics outputs"):
        gradient_model(parse(text), ["x"])


def test_layer_normalization_channels_last_symbolic_batch():
    # ConvNeXt's channels-last LayerNorm over the last axis of (N, H, W, C), batch symbolic.
    text = model_text("y = LayerNormalization<axis: int = -1, epsilon: float = 1e-6>(x, s, b)",
                      "float[N,7,7,8] x, float[8] s, float[8] b", "float[N,7,7,8] y")
    rng = np.random.default_rng(4)
    feeds = {"x": rng.standard_normal((3, 7, 7, 8), np.float32), "s": rng.standard_normal(8, np.float32),
             "b": rng.standard_normal(8, np.float32)}
    check_adjoint(text, ["x"], inputs=feeds)


@pytest.mark.parametrize("epsilon", [1e-5, 0.5])
@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 4, 5), (1, 2, 3, 2, 3)], ids=lambda s: f"rank{len(s)}")
def test_instance_normalization(shape, epsilon):
    c = shape[1]
    text = model_text(f"y = InstanceNormalization<epsilon: float = {epsilon}>(x, s, b)",
                      f"float{_dims(shape)} x, float[{c}] s, float[{c}] b", f"float{_dims(shape)} y")
    check_adjoint(text, ["x"])


def _check_ignoring_deprecated_group_norm(check):
    """onnx's checker rejects opset 18-20 GroupNormalization as deprecated (ONNX Runtime and the reference
    evaluator still run it): check such models as if at opset 21, where everything else they hold is valid."""

    def tolerant(model, *args, **kwargs):
        try:
            return check(model, *args, **kwargs)
        except onnx.checker.ValidationError as error:
            if "GroupNormalization is deprecated" not in str(error):
                raise
        raised = onnx.ModelProto()
        raised.CopyFrom(model)
        for entry in raised.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = 21
        return check(raised, *args, **kwargs)

    return tolerant


@pytest.mark.parametrize("opset", [18, 21])
@pytest.mark.parametrize("groups", [1, 2, 3, 6])
@pytest.mark.parametrize("shape", [(2, 6, 5), (2, 6, 3, 4)], ids=lambda s: f"rank{len(s)}")
def test_group_normalization(shape, groups, opset, monkeypatch):
    # Opset 18 scales and shifts each group, opset 21 each channel.
    monkeypatch.setattr(onnx.checker, "check_model", _check_ignoring_deprecated_group_norm(onnx.checker.check_model))
    param = groups if opset == 18 else shape[1]
    text = model_text(f"y = GroupNormalization<num_groups: int = {groups}, epsilon: float = 0.01>(x, s, b)",
                      f"float{_dims(shape)} x, float[{param}] s, float[{param}] b", f"float{_dims(shape)} y",
                      opset=opset)
    check_adjoint(text, ["x"], oracle=_torch_group_norm(groups, 0.01) if opset >= 21 else None)


def _torch_group_norm(groups, epsilon):
    """Opset-21 GroupNormalization in float64 (the reference evaluator computes it in its float32 stash_type)."""

    def run(feeds):
        weights = {k: torch.from_numpy(feeds[k]) for k in ("x", "s", "b")}
        return F.group_norm(weights["x"], groups, weights["s"], weights["b"], epsilon).numpy()

    return run


def test_group_normalization_symbolic_batch():
    text = model_text("y = GroupNormalization<num_groups: int = 2>(x, s, b)",
                      "float[N,4,3,3] x, float[4] s, float[4] b", "float[N,4,3,3] y", opset=21)
    rng = np.random.default_rng(5)
    feeds = {"x": rng.standard_normal((3, 4, 3, 3), np.float32), "s": rng.standard_normal(4, np.float32),
             "b": rng.standard_normal(4, np.float32)}
    check_adjoint(text, ["x"], inputs=feeds, oracle=_torch_group_norm(2, 1e-5))


def _lrn_spec(x, size, alpha, beta, bias):
    """LRN as the ONNX spec writes it: channel window [c - floor((size-1)/2), c + ceil((size-1)/2)].

    (onnx's ReferenceEvaluator loops over the batch axis instead of the channels, so it cannot be the oracle.)
    """
    channels = x.shape[1]
    square_sum = np.zeros_like(x)
    for c in range(channels):
        lo, hi = max(0, c - (size - 1) // 2), min(channels - 1, c + size // 2)
        square_sum[:, c] = np.sum(x[:, lo:hi + 1] ** 2, axis=1)
    return x / (bias + alpha / size * square_sum) ** beta


LRN_ATTRS = dict(alpha=0.7, beta=0.75, bias=1.5)


def _lrn_text(shape, size, alpha, beta, bias):
    attrs = f"size: int = {size}, alpha: float = {alpha}, beta: float = {beta}, bias: float = {bias}"
    return model_text(f"y = LRN<{attrs}>(x)", f"float{_dims(shape)} x", f"float{_dims(shape)} y")


@pytest.mark.parametrize("size,alpha,beta,bias", [(1, 0.5, 0.75, 1.0), (3, 0.7, 0.75, 1.5), (5, 2.0, 0.5, 2.0),
                                                  (9, 1e-2, 1.3, 0.8)])
def test_lrn(size, alpha, beta, bias):
    # ONNX Runtime's LRN takes 4-D inputs with an odd size only (even sizes: see below).
    shape = (2, 7, 3, 2)
    check_adjoint(_lrn_text(shape, size, alpha, beta, bias), ["x"],
                  oracle=lambda feeds: _lrn_spec(feeds["x"], size, alpha, beta, bias))


class LRN(OpRun):
    """A spec-following LRN for the reference evaluator (named as the op it replaces)."""

    def _run(self, x, alpha=None, beta=None, bias=None, size=None):
        return (_lrn_spec(x, size, alpha, beta, bias).astype(x.dtype),)


@pytest.mark.parametrize("size,shape", [(2, (2, 6, 3, 2)), (4, (2, 6, 3, 2)), (6, (1, 5, 4)), (3, (1, 5, 4))],
                         ids=lambda c: str(c).replace(" ", ""))
def test_lrn_even_size_and_any_rank(size, shape):
    # ONNX Runtime refuses these LRNs, so run our backward graph in float64 on the reference evaluator (with the
    # LRN above) and compare with the finite-difference gradient of sum(seed * LRN(x)), element by element.
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape)
    seed = rng.standard_normal(shape)
    grads = to_float64(gradient_model(parse(_lrn_text(shape, size, **LRN_ATTRS)), ["x"]))
    vjp = ReferenceEvaluator(grads, new_ops=[LRN]).run(["grad/x"], {"x": x, "seed": seed})[0]
    numeric = np.zeros_like(x)
    eps = 1e-6
    for index in np.ndindex(shape):
        step = np.zeros_like(x)
        step[index] = eps
        plus, minus = _lrn_spec(x + step, size, **LRN_ATTRS), _lrn_spec(x - step, size, **LRN_ATTRS)
        numeric[index] = np.sum(seed * (plus - minus)) / (2 * eps)
    np.testing.assert_allclose(vjp, numeric, rtol=1e-6, atol=1e-8)
