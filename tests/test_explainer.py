"""The Explainer's contract on a small network with a residual Add and a Concat merge: loading forms, layers,
targets, errors, the saved explainer model, and input saliency — each checked against torch autograd."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
from onnx import helper, numpy_helper

from converters.pytorch import export
from onnx_gradcam import Explainer, UnsupportedOperatorError, gradient_model, list_layers

CLASSES = 5


class SmallNet(nn.Module):
    """Stem, a residual block, two branches merged by Concat, pooled head: the shapes CAMs meet most."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.left = nn.Conv2d(8, 6, 3, padding=1)
        self.right = nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(12, CLASSES)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        x = torch.cat([torch.relu(self.left(x)), torch.sigmoid(self.right(x))], dim=1)
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    for_bn = SmallNet()
    for module in for_bn.modules():  # give BatchNorm non-trivial statistics
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return for_bn.eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def model_path(net, images, tmp_path_factory):
    path = tmp_path_factory.mktemp("small") / "small.onnx"
    export(net, images, path, layers=["block", "stem"])
    return str(path)


def _autograd(net, images, module, classes, transform=None):
    captured = {}

    def hook(_, __, output):
        captured["a"] = output

    handle = module.register_forward_hook(hook)
    logits = net(images)
    handle.remove()
    score = logits[torch.arange(len(classes)), torch.as_tensor(classes)].sum()
    return captured["a"].detach().numpy(), torch.autograd.grad(score, captured["a"])[0].numpy(), logits


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_list_layers_names_candidates_and_default_is_last(model_path):
    layers = list_layers(model_path)
    names = [layer.display_name for layer in layers]
    assert "stem" in names and "block" in names
    assert all(len(layer.shape) == 4 for layer in layers)
    explainer = Explainer(model_path)
    assert explainer.layers == [layers[-1]]
    assert layers[-1].op == "Concat"  # the merge right before the spatial mean


def test_gradients_equal_autograd_at_layer_inside_residual_block(net, images, model_path):
    classes = [0, 3, 4]
    ours = Explainer(model_path, layer="block").gradients(images.numpy(), classes)["block"]
    activations, grads, _ = _autograd(net, images, net.block, classes)
    assert _rel(ours.activations, activations) < 1e-5
    assert _rel(ours.gradients, grads) < 1e-5


def test_top_class_is_the_argmax_and_maps_are_normalised(net, images, model_path):
    result = Explainer(model_path)(images.numpy())
    logits = net(images).detach().numpy()
    np.testing.assert_array_equal(result.classes, logits.argmax(1))
    np.testing.assert_allclose(result.outputs["output"], logits, rtol=1e-4, atol=1e-5)
    assert result.cams.shape == (3, 32, 32) and result.cams.dtype == np.float32
    (raw,) = result.raw.values()
    assert raw.shape == (3, 16, 16) and raw.min() >= 0
    # pytorch-grad-cam's convention: min-max (1e-7 guard), bilinear half-pixel resize, min-max again
    def minmax(m):
        low = m.min(axis=(1, 2), keepdims=True)
        return (m - low) / ((m - low).max(axis=(1, 2), keepdims=True) + 1e-7)

    up = torch.nn.functional.interpolate(torch.from_numpy(minmax(raw))[:, None], size=(32, 32), mode="bilinear",
                                         align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(result.cams, minmax(up), atol=1e-5)


def test_one_class_for_all_images_and_wrong_count(model_path, images):
    explainer = Explainer(model_path)
    assert list(explainer(images.numpy(), 2).classes) == [2, 2, 2]
    with pytest.raises(ValueError, match="2 targets for 3 images"):
        explainer(images.numpy(), [1, 2])


def test_seed_target_equals_class_target(model_path, images):
    explainer = Explainer(model_path, layer="stem")
    seed = np.zeros((3, CLASSES), np.float32)
    seed[np.arange(3), [1, 2, 3]] = 1.0
    by_seed = explainer.gradients(images.numpy(), seed)["stem"].gradients
    by_class = explainer.gradients(images.numpy(), [1, 2, 3])["stem"].gradients
    np.testing.assert_allclose(by_seed, by_class, rtol=1e-6, atol=1e-7)


def test_several_layers_give_one_combined_map(model_path, images):
    result = Explainer(model_path, layer=["stem", "auto"])(images.numpy(), [0, 1, 2])
    assert set(result.raw) == {"stem", result.layers[1].display_name}
    assert result.cams.shape == (3, 32, 32)
    assert np.all(result.cams.reshape(3, -1).max(1) > 0.99)


def test_unknown_layer_lists_close_names(model_path):
    with pytest.raises(ValueError, match=r"no layer named 'blok'.*'block'"):
        Explainer(model_path, layer="blok")


def test_loads_from_path_bytes_and_proto_without_touching_the_file(model_path, images):
    before = hashlib.sha256(open(model_path, "rb").read()).hexdigest()
    proto = onnx.load(model_path)
    results = [Explainer(source, layer="block")(images.numpy(), [0, 1, 2]).cams
               for source in (model_path, open(model_path, "rb").read(), proto)]
    assert hashlib.sha256(open(model_path, "rb").read()).hexdigest() == before
    assert proto == onnx.load(model_path)
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])


def test_saved_explainer_model_runs_in_plain_onnxruntime_without_this_package(model_path, images, tmp_path):
    explainer = Explainer(model_path, layer="block")
    saved = tmp_path / "explainer.onnx"
    explainer.save(str(saved))
    onnx.checker.check_model(str(saved), full_check=True)
    np.save(tmp_path / "images.npy", images.numpy())
    script = textwrap.dedent(f"""
        import sys, numpy as np, onnxruntime as ort
        session = ort.InferenceSession({str(saved)!r}, providers=["CPUExecutionProvider"])
        images = np.load({str(tmp_path / "images.npy")!r})
        cam, = session.run(["cam"], {{"input": images, "target_class": np.array([0, 1, 2], np.int64)}})
        np.save({str(tmp_path / "cam.npy")!r}, cam)
        assert not any(name.startswith(("onnx_gradcam", "torch")) for name in sys.modules)
    """)
    subprocess.run([sys.executable, "-c", script], check=True)
    np.testing.assert_allclose(np.load(tmp_path / "cam.npy"), explainer(images.numpy(), [0, 1, 2]).cams,
                               atol=1e-6)


def test_symbolic_batch_sizes(model_path, images):
    explainer = Explainer(model_path)
    single = explainer(images.numpy()[:1], [4]).cams
    triple = explainer(images.numpy(), [4, 4, 4]).cams
    np.testing.assert_allclose(single[0], triple[0], atol=1e-5)


def test_no_error_output_when_choosing_providers():
    script = ("import onnx_gradcam.runtime as r; print(r.resolve_providers('auto'))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stderr == ""
    assert "CPUExecutionProvider" in done.stdout


def test_unknown_provider_is_named():
    with pytest.raises(ValueError, match="NoSuchExecutionProvider"):
        Explainer(_tiny_model(), providers=["NoSuchExecutionProvider"])


def _tiny_model(head_op: str = "Identity", opset: int = 20, weights_as_constants: bool = False,
                ir_version: int = 8) -> onnx.ModelProto:
    """x (N,2,6,6) -> Conv -> Relu -> {head_op} -> mean -> Gemm -> logits (N, 3). IR 3 lists the
    initializers among the graph inputs too, as that IR required."""
    rng = np.random.default_rng(0)
    conv_w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    fc_w = rng.standard_normal((4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["act"], name="act"),
        helper.make_node(head_op, ["act"] + (["axis"] if head_op == "CumSum" else []), ["mid"], name="odd"),
        helper.make_node("ReduceMean", ["mid"] + (["axes"] if opset >= 18 else []), ["pooled"], name="pool",
                         keepdims=0, **({} if opset >= 18 else {"axes": [2, 3]})),
        helper.make_node("Gemm", ["pooled", "fc_w"] + (["fc_b"] if opset < 11 else []), ["logits"], name="fc"),
    ]
    constants = {"conv_w": conv_w, "fc_w": fc_w, "axes": np.array([2, 3], np.int64), "axis": np.array(3, np.int64),
                 **({"fc_b": np.zeros(3, np.float32)} if opset < 11 else {})}
    initializers = [numpy_helper.from_array(v, k) for k, v in constants.items()]
    if weights_as_constants:
        nodes = [helper.make_node("Constant", [], [t.name], name=f"const_{t.name}", value=t)
                 for t in initializers] + nodes
        initializers = []
    listed = [helper.make_tensor_value_info(t.name, t.data_type, t.dims) for t in initializers] if ir_version < 4 else []
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                            ["N", 2, 6, 6]), *listed],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", 3])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def test_op_without_rule_is_named_with_a_layer_after_it():
    with pytest.raises(UnsupportedOperatorError) as error:
        Explainer(_tiny_model("CumSum"), layer="conv")(np.ones((1, 2, 6, 6), np.float32))
    message = str(error.value)
    assert "'CumSum'" in message and "'odd'" in message and "'mid'" in message


def _tiny_torch(model: onnx.ModelProto) -> tuple:
    """The same tiny model in torch, for autograd."""
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    return weights["conv_w"], weights["fc_w"]


NEWEST_OPSET = onnx.defs.onnx_opset_version()
FORMS = [(opset, False, 8) for opset in (7, 9, 11, 13, 15, 17, 18, 20, NEWEST_OPSET)] + [(20, True, 8), (9, False, 3)]


@pytest.mark.parametrize("opset, constants, ir_version", FORMS,
                         ids=[f"opset{o}" + ("-Constant-weights" if c else "") + f"-ir{ir}" for o, c, ir in FORMS])
def test_every_opset_ir_3_and_constant_node_weights(opset, constants, ir_version):
    model = _tiny_model(opset=opset, weights_as_constants=constants, ir_version=ir_version)
    conv_w, fc_w = _tiny_torch(_tiny_model())
    x = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(3))
    act = torch.relu(torch.nn.functional.conv2d(x, conv_w, padding=1)).requires_grad_(True)
    logits = act.mean(dim=(2, 3)) @ fc_w
    expected = torch.autograd.grad(logits[:, 1].sum(), act)[0].numpy()
    (ours,) = Explainer(model, layer="act").gradients(x.numpy(), 1).values()
    assert _rel(ours.gradients, expected) < 1e-5


def test_external_data_models_load(tmp_path):
    path = tmp_path / "external.onnx"
    onnx.save(_tiny_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(Explainer(str(path), layer="act")(x).cams, Explainer(_tiny_model(), layer="act")(x).cams)


def test_input_saliency_equals_autograd(net, images, model_path):
    grads = gradient_model(model_path, ["input"], output="output")
    seed = np.zeros((3, CLASSES), np.float32)
    seed[:, 2] = 1.0
    session = ort.InferenceSession(grads.SerializeToString(), providers=["CPUExecutionProvider"])
    (ours,) = session.run(["grad/input"], {"input": images.numpy(), "seed": seed})
    x = images.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(net(x)[:, 2].sum(), x)
    assert _rel(ours, expected.numpy()) < 1e-5
