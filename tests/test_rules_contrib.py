"""Adjoint checks for the ops ONNX Runtime's offline optimiser writes: com.microsoft fusions and nchwc ops.

ONNX Runtime runs these ops in float32 only, and onnx's ReferenceEvaluator not at all, so the float64 oracle is
either the standard graph ONNX Runtime fused them from (run by the ReferenceEvaluator: ONNX Runtime writes the
contrib ops itself, with the attributes it chooses) or, for attributes no such fusion here writes, a torch
re-implementation of the op. ``check_adjoint`` first checks that the oracle's forward output is ONNX Runtime's.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from adjoint import check_adjoint, to_float64
from onnx_gradcam.autodiff import gradient_model

MICROSOFT = "com.microsoft"
NCHWC = "com.microsoft.nchwc"


def build(nodes, inputs: dict, output_shape, weights: dict = (), opsets=(("", 20), (MICROSOFT, 1))):
    """A float32 model of ``nodes``: graph inputs ``{name: shape}``, the output ``y``, constant ``weights``."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, output_shape)],
        [numpy_helper.from_array(np.asarray(v, np.float32), n) for n, v in dict(weights).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], ir_version=10)


def optimised(model: onnx.ModelProto, level: str, tmp_path) -> onnx.ModelProto:
    """``model`` as ONNX Runtime's CPU optimiser writes it at ``level`` (BASIC, EXTENDED or ALL), from the model
    with its inferred shapes (as exporters write them): ONNX Runtime keeps them for the tensors it fuses into
    contrib ops, which onnx's shape inference cannot see through."""
    model = onnx.shape_inference.infer_shapes(model)
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, f"ORT_ENABLE_{level}")
    options.optimized_model_filepath = str(tmp_path / f"{level}.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return onnx.load(options.optimized_model_filepath)


def ops(model: onnx.ModelProto) -> set[str]:
    return {f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in model.graph.node}


def reference_oracle(model: onnx.ModelProto):
    """The standard ``model`` in float64, by onnx's ReferenceEvaluator."""
    evaluator = ReferenceEvaluator(to_float64(model))
    return lambda feeds: evaluator.run(["y"], feeds)[0]


def check_fused(model: onnx.ModelProto, level: str, expected_op: str, wrt, tmp_path, **kwargs):
    """ONNX Runtime fuses ``model`` at ``level`` into ``expected_op``; the fused model's gradients pass the
    adjoint identity against the standard model in float64."""
    fused = optimised(model, level, tmp_path)
    assert expected_op in ops(fused), f"ONNX Runtime wrote {sorted(ops(fused))}"
    return check_adjoint(fused, wrt, oracle=reference_oracle(model), **kwargs)


def weights(rng, **shapes):
    return {name: rng.standard_normal(shape) * 0.5 for name, shape in shapes.items()}


# --- what ONNX Runtime fuses at ORT_ENABLE_EXTENDED, checked against the graph it fused ---------------------
EXTENDED_ACTIVATIONS = {
    "Relu": helper.make_node("Relu", ["c"], ["y"]),
    "Clip": helper.make_node("Clip", ["c", "lo", "hi"], ["y"]),
    "LeakyRelu": helper.make_node("LeakyRelu", ["c"], ["y"], alpha=0.2),
    "HardSigmoid": helper.make_node("HardSigmoid", ["c"], ["y"], alpha=0.3, beta=0.4),
    "Sigmoid": helper.make_node("Sigmoid", ["c"], ["y"]),
    "Tanh": helper.make_node("Tanh", ["c"], ["y"]),
}


@pytest.mark.parametrize("activation", EXTENDED_ACTIVATIONS)
def test_conv_and_activation_as_onnx_runtime_fuses_them(activation, tmp_path):
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 1]),
             EXTENDED_ACTIVATIONS[activation]]
    model = build(nodes, {"x": [2, 3, 7, 6]}, [2, 4, 4, 6],
                  {**weights(rng, w=(4, 3, 3, 3), b=(4,)), "lo": -0.4, "hi": 0.9})
    check_fused(model, "EXTENDED", "com.microsoft.FusedConv", ["x"], tmp_path)


def test_gemm_and_activation_as_onnx_runtime_fuses_them(tmp_path):
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("Gemm", ["a", "w", "b"], ["c"], transB=1, alpha=0.7),
             helper.make_node("LeakyRelu", ["c"], ["y"], alpha=0.1)]
    model = build(nodes, {"a": [3, 5]}, [3, 4], weights(rng, w=(4, 5), b=(4,)))
    check_fused(model, "EXTENDED", "com.microsoft.FusedGemm", ["a"], tmp_path)


def test_transformer_block_as_onnx_runtime_fuses_it(tmp_path):
    # Scaled attention scores, the key transposed (FusedMatMul), a bias and Gelu (BiasGelu), SiLU (QuickGelu), a
    # residual sum before LayerNormalization (SkipLayerNormalization). The batch is symbolic, as exporters write
    # it: with a fixed one ONNX Runtime makes the biased MatMul a Gemm instead. The oracle is torch: onnx's
    # ReferenceEvaluator computes LayerNormalization in float32 (its stash_type) and Gelu no better.
    rng = np.random.default_rng(2)
    params = {**weights(rng, w1=(8, 8), b1=(8,), gamma=(8,), beta=(8,)), "scale": 0.35}
    nodes = [helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["scores"]),
             helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
             helper.make_node("MatMul", ["scaled", "v"], ["attended"]),
             helper.make_node("MatMul", ["attended", "w1"], ["hidden"]),
             helper.make_node("Add", ["hidden", "b1"], ["biased"]),
             helper.make_node("Gelu", ["biased"], ["gelu"]),
             helper.make_node("Sigmoid", ["gelu"], ["gate"]),
             helper.make_node("Mul", ["gelu", "gate"], ["silu"]),
             helper.make_node("Add", ["silu", "q"], ["residual"]),
             helper.make_node("LayerNormalization", ["residual", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5)]
    shape = ["N", 5, 8]
    fused = optimised(build(nodes, dict.fromkeys("qkv", shape), shape, params), "EXTENDED", tmp_path)
    assert {"com.microsoft.FusedMatMul", "com.microsoft.BiasGelu", "com.microsoft.QuickGelu",
            "com.microsoft.SkipLayerNormalization"} <= ops(fused), f"ONNX Runtime wrote {sorted(ops(fused))}"
    w = {name: torch.from_numpy(value) for name, value in params.items() if name != "scale"}

    def oracle(feeds):
        q, k, v = (torch.from_numpy(feeds[name]) for name in "qkv")
        gelu = F.gelu((q @ k.transpose(1, 2) * 0.35) @ v @ w["w1"] + w["b1"])
        return F.layer_norm(gelu * torch.sigmoid(gelu) + q, [8], w["gamma"], w["beta"], eps=1e-5).numpy()

    feeds = {name: rng.standard_normal((2, 5, 8)).astype(np.float32) for name in "qkv"}
    check_adjoint(fused, ["q", "k", "v"], inputs=feeds, oracle=oracle)


# --- the contrib ops themselves, over the attributes that change their maths -------------------------------
def torch_activation(kind, params):
    """FusedConv's activation (GetFusedActivationAttr) in torch."""
    functions = {None: lambda v: v, "Relu": F.relu, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid,
                 "LeakyRelu": lambda v: F.leaky_relu(v, params[0] if params else 0.01),
                 "Clip": lambda v: torch.clamp(v, *params),
                 "HardSigmoid": lambda v: torch.clamp(params[0] * v + params[1], 0, 1)}
    return functions[kind]


FUSED_CONV_ACTIVATIONS = [(None, []), ("Relu", []), ("Tanh", []), ("Sigmoid", []), ("LeakyRelu", [0.1]),
                          ("LeakyRelu", [-0.3]), ("Clip", [-0.5, 0.8]), ("HardSigmoid", [0.2, 0.5])]


@pytest.mark.parametrize("with_z", [False, True], ids=["no_z", "z"])
@pytest.mark.parametrize("activation,params", FUSED_CONV_ACTIVATIONS, ids=lambda v: str(v))
def test_fused_conv(activation, params, with_z):
    rng = np.random.default_rng(3)
    attrs = {"pads": [1, 1, 1, 1], "strides": [2, 2], "group": 2}
    if activation:
        attrs.update(activation=activation, **({"activation_params": params} if params else {}))
    inputs = ["x", "w", "b"] + (["z"] if with_z else [])
    node = helper.make_node("FusedConv", inputs, ["y"], domain=MICROSOFT, **attrs)
    w, b = rng.standard_normal((6, 2, 3, 3)), rng.standard_normal(6)
    model = build([node], {"x": [2, 4, 7, 8], **({"z": [2, 6, 4, 4]} if with_z else {})}, [2, 6, 4, 4],
                  {"w": w, "b": b})

    def oracle(feeds):
        conv = F.conv2d(torch.from_numpy(feeds["x"]), torch.from_numpy(w), torch.from_numpy(b), stride=2, padding=1,
                        groups=2)
        return torch_activation(activation, params)(conv + (torch.from_numpy(feeds["z"]) if with_z else 0)).numpy()

    check_adjoint(model, ["x"] + (["z"] if with_z else []), oracle=oracle)


def test_fused_conv_without_bias():
    rng = np.random.default_rng(4)
    node = helper.make_node("FusedConv", ["x", "w"], ["y"], domain=MICROSOFT, activation="Relu", dilations=[2, 1])
    w = rng.standard_normal((3, 2, 2, 3))
    model = build([node], {"x": [1, 2, 6, 6]}, [1, 3, 4, 4], {"w": w})
    check_adjoint(model, ["x"], oracle=lambda f: F.relu(F.conv2d(torch.from_numpy(f["x"]), torch.from_numpy(w),
                                                                  dilation=(2, 1))).numpy())


GEMM_ACTIVATIONS = [("Relu", {}), ("LeakyRelu", {"activation_alpha": 0.2}), ("Sigmoid", {}), ("Tanh", {}),
                    ("HardSigmoid", {"activation_alpha": 0.3, "activation_beta": 0.45}), ("Elu", {"activation_alpha": 0.7})]
TORCH_GEMM_ACTIVATIONS = {"Relu": F.relu, "LeakyRelu": lambda v: F.leaky_relu(v, 0.2), "Sigmoid": torch.sigmoid,
                          "Tanh": torch.tanh, "HardSigmoid": lambda v: torch.clamp(0.3 * v + 0.45, 0, 1),
                          "Elu": lambda v: F.elu(v, 0.7)}


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 1)], ids=["plain", "transposed"])
@pytest.mark.parametrize("activation,attrs", GEMM_ACTIVATIONS, ids=lambda v: str(v))
def test_fused_gemm(activation, attrs, trans_a, trans_b):
    node = helper.make_node("FusedGemm", ["a", "b", "c"], ["y"], domain=MICROSOFT, activation=activation,
                            alpha=0.8, beta=1.3, transA=trans_a, transB=trans_b, **attrs)
    a_shape, b_shape = ([5, 3] if trans_a else [3, 5]), ([4, 5] if trans_b else [5, 4])
    model = build([node], {"a": a_shape, "b": b_shape, "c": [1, 4]}, [3, 4])

    def oracle(feeds):
        a, b = torch.from_numpy(feeds["a"]), torch.from_numpy(feeds["b"])
        pre = 0.8 * (a.T if trans_a else a) @ (b.T if trans_b else b) + 1.3 * torch.from_numpy(feeds["c"])
        return TORCH_GEMM_ACTIVATIONS[activation](pre).numpy()

    check_adjoint(model, ["a", "b", "c"], oracle=oracle)


def torch_gelu(v, approximate="none"):
    return F.gelu(v, approximate=approximate)


GELU_CASES = {
    "Gelu": ({}, False, torch_gelu),
    "BiasGelu": ({}, True, torch_gelu),
    "FastGelu": ({}, False, lambda v: torch_gelu(v, "tanh")),
    "FastGelu_bias": ({}, True, lambda v: torch_gelu(v, "tanh")),
    "QuickGelu": ({"alpha": 1.0}, False, lambda v: v * torch.sigmoid(v)),
    "QuickGelu_1.702": ({"alpha": 1.702}, False, lambda v: v * torch.sigmoid(1.702 * v)),
}


@pytest.mark.parametrize("case", GELU_CASES)
def test_gelu_family(case):
    attrs, with_bias, function = GELU_CASES[case]
    inputs = ["x", "bias"] if with_bias else ["x"]
    node = helper.make_node(case.split("_")[0], inputs, ["y"], domain=MICROSOFT, **attrs)
    model = build([node], {"x": [2, 3, 6], **({"bias": [6]} if with_bias else {})}, [2, 3, 6])

    def oracle(feeds):
        x = torch.from_numpy(feeds["x"])
        return function(x + torch.from_numpy(feeds["bias"]) if with_bias else x).numpy()

    check_adjoint(model, inputs, oracle=oracle, inputs={"x": 2 * np.random.default_rng(5).standard_normal((2, 3, 6))
                                                        .astype(np.float32)})


MATMUL_CASES = {
    # name: (A's shape, B's shape, attributes); A' and B' are (2, 3, 4) and (2, 4, 5) but where broadcast
    "alpha": ([2, 3, 4], [2, 4, 5], {"alpha": 0.125}),
    "transA": ([2, 4, 3], [2, 4, 5], {"transA": 1}),
    "transB": ([2, 3, 4], [2, 5, 4], {"transB": 1, "alpha": 0.5}),
    "both": ([2, 4, 3], [2, 5, 4], {"transA": 1, "transB": 1}),
    "broadcast_b": ([2, 3, 4], [5, 4], {"transB": 1}),
    "transBatchA": ([3, 2, 4], [2, 4, 5], {"transBatchA": 1}),
    "transBatchA_transA": ([4, 2, 3], [2, 4, 5], {"transBatchA": 1, "transA": 1}),
    "transBatchB": ([2, 3, 4], [4, 2, 5], {"transBatchB": 1}),
    "rank4_transBatchB_transB": ([2, 2, 3, 4], [5, 2, 2, 4], {"transBatchB": 1, "transB": 1}),
}


def fused_matmul_axes(rank, transposed, batch):
    axes = list(range(1, rank - 1)) + [0, rank - 1] if batch else list(range(rank))
    if transposed:
        axes[-2:] = axes[-1], axes[-2]
    return axes


@pytest.mark.parametrize("case", MATMUL_CASES)
def test_fused_matmul(case):
    a_shape, b_shape, attrs = MATMUL_CASES[case]
    node = helper.make_node("FusedMatMul", ["a", "b"], ["y"], domain=MICROSOFT, **attrs)

    def oracle(feeds):
        a, b = torch.from_numpy(feeds["a"]), torch.from_numpy(feeds["b"])
        a = a.permute(fused_matmul_axes(a.dim(), attrs.get("transA", 0), attrs.get("transBatchA", 0)))
        b = b.permute(fused_matmul_axes(b.dim(), attrs.get("transB", 0), attrs.get("transBatchB", 0)))
        return (attrs.get("alpha", 1.0) * a @ b).numpy()

    out_shape = list(oracle({"a": np.zeros(a_shape), "b": np.zeros(b_shape)}).shape)
    check_adjoint(build([node], {"a": a_shape, "b": b_shape}, out_shape), ["a", "b"], oracle=oracle)


@pytest.mark.parametrize("skip_shape", [[2, 5, 8], [1, 5, 8], [5, 8]], ids=["full", "batch1", "2d"])
@pytest.mark.parametrize("beta,bias", [(False, False), (True, False), (True, True)], ids=["gamma", "beta", "bias"])
@pytest.mark.parametrize("sum_used", [False, True], ids=["output", "output_and_sum"])
def test_skip_layer_normalization(skip_shape, beta, bias, sum_used):
    rng = np.random.default_rng(6)
    params = {"gamma": rng.standard_normal(8), "beta": rng.standard_normal(8), "bias": rng.standard_normal(8)}
    inputs = ["x", "skip", "gamma", "beta" if beta else "", "bias" if bias else ""]
    outputs = ["norm", "", "", "sum"] if sum_used else ["y"]
    nodes = [helper.make_node("SkipLayerNormalization", inputs, outputs, domain=MICROSOFT, epsilon=0.01)]
    if sum_used:  # the sum, too, feeds the output
        nodes.append(helper.make_node("Add", ["norm", "sum"], ["y"]))
    model = build(nodes, {"x": [2, 5, 8], "skip": skip_shape}, [2, 5, 8], params)

    def oracle(feeds):
        total = torch.from_numpy(feeds["x"]) + torch.from_numpy(feeds["skip"])
        total = total + (torch.from_numpy(params["bias"]) if bias else 0)
        norm = F.layer_norm(total, [8], torch.from_numpy(params["gamma"]),
                            torch.from_numpy(params["beta"]) if beta else None, eps=0.01)
        return (norm + total if sum_used else norm).numpy()

    check_adjoint(model, ["x", "skip"], oracle=oracle)


def test_skip_layer_normalization_refuses_gradient_into_its_statistics():
    nodes = [helper.make_node("SkipLayerNormalization", ["x", "skip", "gamma"], ["norm", "mean"], domain=MICROSOFT),
             helper.make_node("Add", ["norm", "mean"], ["y"])]
    model = build(nodes, {"x": [2, 5, 8], "skip": [2, 5, 8]}, [2, 5, 8], {"gamma": np.ones(8)})
    with pytest.raises(ValueError, match="SkipLayerNormalization node .*mean or inverse"):
        gradient_model(model, ["x"])


def test_unsupported_fused_activation_names_itself():
    node = helper.make_node("FusedGemm", ["a", "b"], ["y"], domain=MICROSOFT, activation="NoSuchActivation")
    with pytest.raises(ValueError, match="FusedGemm node .*'NoSuchActivation'"):
        gradient_model(build([node], {"a": [3, 5], "b": [5, 4]}, [3, 4]), ["a"])


# --- the nchwc layout of ORT_ENABLE_ALL, checked against the graph ONNX Runtime blocked --------------------
NCHWC_ACTIVATIONS = {
    "Relu": [helper.make_node("Relu", ["d"], ["e"])],
    "Clip": [helper.make_node("Clip", ["d", "lo", "hi"], ["e"])],
    "HardSwish": [helper.make_node("HardSwish", ["d"], ["e"])],
    "HardSigmoid": [helper.make_node("HardSigmoid", ["d"], ["e"], alpha=0.3, beta=0.4)],
    "LeakyRelu": [helper.make_node("LeakyRelu", ["d"], ["e"], alpha=0.2)],
    "Sigmoid": [helper.make_node("Sigmoid", ["d"], ["e"])],
    "Tanh": [helper.make_node("Tanh", ["d"], ["e"])],
}


def nchwc_cnn(activation: str, rng, classes: int = 24) -> onnx.ModelProto:
    """A CNN ONNX Runtime blocks at ORT_ENABLE_ALL: an NCHW-input Conv on 3 channels, a strided one, a depthwise
    one with ``activation``, a residual sum (its Sum input) and an output Conv of ``classes`` channels, padded to
    a block."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Conv", ["c", "w3", "b3"], ["d"], pads=[2, 2, 2, 2], group=32, dilations=[2, 2]),
             *NCHWC_ACTIVATIONS[activation],
             helper.make_node("Conv", ["e", "w4"], ["f"]),
             helper.make_node("Add", ["f", "c"], ["g"]),
             helper.make_node("Relu", ["g"], ["h"]),
             helper.make_node("Conv", ["h", "w5"], ["y"])]
    return build(nodes, {"x": [2, 3, 9, 9]}, [2, classes, 5, 5],
                 {**weights(rng, w1=(16, 3, 3, 3), b1=(16,), w2=(32, 16, 3, 3), b2=(32,), w3=(32, 1, 3, 3),
                            b3=(32,), w4=(32, 32, 1, 1), w5=(classes, 32, 1, 1)), "lo": -0.3, "hi": 0.6})


@pytest.mark.parametrize("activation", NCHWC_ACTIVATIONS)
def test_nchwc_convolutions(activation, tmp_path):
    model = nchwc_cnn(activation, np.random.default_rng(7))
    check_fused(model, "ALL", "com.microsoft.nchwc.Conv", ["x"], tmp_path)


def test_nchwc_output_of_channels_not_a_multiple_of_four(tmp_path):
    # A segmentation head's 21 classes: ReorderInput, the adjoint of their ReorderOutput, takes multiples of 4.
    model = nchwc_cnn("Relu", np.random.default_rng(10), classes=21)
    check_fused(model, "ALL", "com.microsoft.nchwc.ReorderOutput", ["x"], tmp_path)


def test_nchwc_channels_last_reorders(tmp_path):
    # ConvNeXt's pattern: a depthwise Conv, then LayerNormalization over channels last and back.
    rng = np.random.default_rng(8)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2", "b2"], ["c"], pads=[3, 3, 3, 3], group=16),
             helper.make_node("Transpose", ["c"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("LayerNormalization", ["t", "gamma", "beta"], ["n"], axis=-1),
             helper.make_node("Transpose", ["n"], ["u"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["u", "w3"], ["y"])]
    model = build(nodes, {"x": [2, 3, 8, 8]}, [2, 16, 8, 8],
                  weights(rng, w1=(16, 3, 3, 3), w2=(16, 1, 7, 7), b2=(16,), gamma=(16,), beta=(16,), w3=(16, 16, 1, 1)))
    check_fused(model, "ALL", "com.microsoft.nchwc.ReorderOutput", ["x"], tmp_path)


def test_nchwc_conv_on_eight_channels_is_refused(tmp_path):
    # With blocks of 8 it reads them blocked, with blocks of 16 as NCHW: the model alone cannot tell.
    rng = np.random.default_rng(9)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["y"])]
    model = optimised(build(nodes, {"x": [1, 8, 4, 4]}, [1, 16, 4, 4], weights(rng, w1=(16, 8, 1, 1))), "ALL",
                      tmp_path)
    assert "com.microsoft.nchwc.Conv" in ops(model)
    with pytest.raises(ValueError, match="8 input channels"):
        gradient_model(model, ["x"])
