"""converters.pytorch.export: torchvision segmentation models (dict outputs), a two-input model, nested
outputs, eval mode, naming, metadata and errors — each exported model checked against torch.

Oracles: predictions against the same float32 torch model (max abs diff <= 1e-4, every output); gradients
against torch.autograd.grad of the same score w.r.t. the same module output, computed in float64 on a float64
copy of the model (float32 torch gradients drift from float64 by up to ~3e-3 relative over deep heads, ours
stay within ~1e-6: see tests/test_torchvision_exactness.py). Random weights, fixed seeds, eval mode.

Runtime: about 40 s on 2 CPU cores (27 tests), most of it exporting and differentiating the torchvision models.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torchvision

from converters import pytorch
from converters.pytorch import export
from onnx_gradcam import Explainer, list_layers, metadata

REL_TOL = 1e-4
ABS_TOL = 1e-4  # torch float32 vs ONNX Runtime float32 predictions


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def run_onnx(path, feeds: dict) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: np.asarray(v) for k, v in feeds.items()})))


def call(model, inputs: dict):
    """Call the model as it was exported: positionally where the ONNX inputs have the converter's positional
    names (input, input_0, input_1, ...), else by keyword."""
    positional = list(inputs) in (["input"], [f"input_{i}" for i in range(len(inputs))])
    return model(*inputs.values()) if positional else model(**inputs)


def torch_outputs(model, inputs: dict, layers=()) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The model's outputs (flattened and named as the converter names them), and the layers' outputs."""
    captured, handles = {}, []
    modules = dict(model.named_modules())
    for name in layers:
        handles.append(modules[name].register_forward_hook(lambda _, __, out, name=name: captured.update({name: out})))
    try:
        with torch.no_grad():
            outputs = call(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return ({name: value.numpy() for name, value in pytorch.flatten_outputs(outputs)},
            {name: value.numpy() for name, value in captured.items()})


def assert_round_trip(model, path, inputs: dict, layers=()) -> None:
    """ONNX Runtime's predictions equal torch's within ABS_TOL, output by output, and so do the layers' outputs
    within 1e-5 relative (activations deep in a network reach hundreds: float32 rounding alone exceeds 1e-4
    absolute there, while the relative error stays near 1e-6)."""
    outputs, layer_outputs = torch_outputs(model, inputs, layers)
    actual = run_onnx(path, {k: v.numpy() for k, v in inputs.items()})
    assert list(actual) == list(outputs) + list(layer_outputs)
    for name, value in outputs.items():
        assert actual[name].shape == value.shape, name
        assert np.abs(actual[name] - value).max() <= ABS_TOL, f"output {name!r} differs"
    for name, value in layer_outputs.items():
        assert actual[name].shape == value.shape, name
        assert relative_error(actual[name], value) <= 1e-5, f"layer {name!r} differs"


def autograd_oracle(model, inputs: dict, layer: str, score) -> tuple[np.ndarray, np.ndarray]:
    """(activations, d score(outputs) / d activations) of module ``layer``, by autograd on a float64 copy."""
    model = copy.deepcopy(model).double()
    inputs = {k: v.double() for k, v in inputs.items()}
    captured = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda _, __, out: captured.update(a=out))
    try:
        outputs = call(model, inputs)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(score(outputs), captured["a"])
    return captured["a"].detach().numpy(), grad.numpy()


def assert_gradients_equal_autograd(path, model, inputs: dict, layer: str, targets, score, output=None) -> None:
    explainer = Explainer(path, layer=layer, output=output, providers="CPUExecutionProvider")
    feeds = {k: v.numpy() for k, v in inputs.items()}
    # One layer: its entry is keyed by the layer's display name, which for a tensor several modules end at is
    # the outermost of them (fcn's backbone.layer4 output is also the output of "backbone").
    (ours,) = explainer.gradients(feeds if len(feeds) > 1 else next(iter(feeds.values())), targets).values()
    activations, grad = autograd_oracle(model, inputs, layer, score)
    assert relative_error(ours.activations, activations) <= REL_TOL, "the layer is not the module's output"
    assert relative_error(ours.gradients, grad) <= REL_TOL


# --- torchvision segmentation models: dict outputs ------------------------------------------------------------

# arch: (constructor options, layers exported: a late backbone block and the head's first module)
SEGMENTATION = {
    "fcn_resnet50": ({}, ["backbone.layer4", "classifier.0"]),
    # aux_loss=True adds the "aux" head: the output dict then has two keys.
    "deeplabv3_mobilenet_v3_large": ({"aux_loss": True}, ["backbone.16", "classifier.0"]),
}
SEGMENTATION_KEYS = {"fcn_resnet50": ["out"], "deeplabv3_mobilenet_v3_large": ["out", "aux"]}
# Measured gradient errors against float64: 3e-8 to 2e-7 relative, but 2.2e-5 for deeplabv3 at backbone.16. The
# random-weight MobileNetV3 shrinks activations to ~1e-8, and ASPP ReLU inputs there come within 1e-14 of zero
# (float32 rounding at that scale): the error sits at one pixel of one image plus a uniform part through the
# pooling branch, the mark of a ReLU decision taken the other way, not of a wrong rule.


@pytest.fixture(scope="module", params=sorted(SEGMENTATION))
def segmentation(request, tmp_path_factory):
    arch = request.param
    options, layers = SEGMENTATION[arch]
    torch.manual_seed(0)
    model = getattr(torchvision.models.segmentation, arch)(weights=None, weights_backbone=None, **options).eval()
    images = torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    path = tmp_path_factory.mktemp(arch) / f"{arch}.onnx"
    export(model, images, path, layers=layers)
    return arch, model, images, path


def segmentation_seed(shape, cls: int) -> np.ndarray:
    """One class summed over a rectangular mask, per image a different one: one_hot(class) * mask."""
    seed = np.zeros(shape, np.float32)
    height, width = shape[2:]
    boxes = [(0.15, 0.25, 0.7, 0.85), (0.45, 0.0, 1.0, 0.4)]  # top, left, bottom, right, as fractions
    for image in range(shape[0]):
        top, left, bottom, right = boxes[image % len(boxes)]
        seed[image, cls, int(top * height):int(bottom * height), int(left * width):int(right * width)] = 1.0
    return seed


@pytest.mark.slow
@pytest.mark.parametrize("which", [0, 1], ids=["backbone", "head"])
def test_segmentation_gradients_equal_autograd(segmentation, which):
    arch, model, images, path = segmentation
    layer = SEGMENTATION[arch][1][which]
    seed = segmentation_seed((2, 21, 128, 128), cls=7)
    score = lambda outputs: (torch.from_numpy(seed).double() * outputs["out"]).sum()  # noqa: E731
    assert_gradients_equal_autograd(path, model, {"input": images}, layer, seed, score, output="out")


@pytest.mark.slow
def test_segmentation_round_trip_and_output_names(segmentation):
    arch, model, images, path = segmentation
    layers = SEGMENTATION[arch][1]
    outputs = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
    assert outputs == SEGMENTATION_KEYS[arch] + layers
    assert_round_trip(model, path, {"input": images}, layers)


@pytest.mark.slow
def test_list_layers_names_candidates_by_module_path_without_requested_layers(tmp_path):
    # No layers requested, so no metadata names them: the names come from the exporter's module scopes.
    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None).eval()
    images = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "fcn.onnx"
    export(model, images, path)
    assert metadata.read(onnx.load(str(path))).layers == {}
    names = {name for layer in list_layers(str(path)) for name in (layer.name, *layer.aliases)}
    assert {"backbone.layer4", "backbone.layer3", "backbone.layer4.2", "classifier.1", "classifier"} <= names
    # classifier.0 (a Conv) is folded with the BatchNorm after it: only a requested layer keeps its output.
    assert "classifier.0" not in names
    # ... and the Explainer takes them: gradients at the scope-named layer equal autograd.
    seed = segmentation_seed((1, 21, 64, 64), cls=3)
    score = lambda outputs: (torch.from_numpy(seed).double() * outputs["out"]).sum()  # noqa: E731
    assert_gradients_equal_autograd(path, model, {"input": images}, "backbone.layer4", seed, score)


# --- two inputs -------------------------------------------------------------------------------------------------

class Merge(nn.Module):
    """The branches meet twice: concatenated into a 1x1 conv, then added to the image branch."""

    def __init__(self):
        super().__init__()
        self.fuse = nn.Conv2d(16, 8, 1)

    def forward(self, image_features, depth_features):
        return self.fuse(torch.cat([image_features, depth_features], dim=1)) + image_features


class ImageAndDepth(nn.Module):
    """An RGB image and a per-pixel map (say depth), each through its own stem, merged, then classified."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.image_stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.depth_stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.merge = Merge()
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(8, classes)

    def forward(self, image, depth):
        merged = self.merge(self.image_stem(image), self.depth_stem(depth))
        return self.head(self.block(merged).mean(dim=(2, 3)))


def _with_batchnorm_statistics(model: nn.Module) -> nn.Module:
    """Non-trivial running statistics, so that eval-mode BatchNorm is not the identity."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


TWO_INPUT_LAYERS = ["image_stem", "depth_stem", "merge", "block"]
CLASSES = [1, 3]


@pytest.fixture(scope="module")
def two_input():
    torch.manual_seed(0)
    model = _with_batchnorm_statistics(ImageAndDepth()).eval()
    generator = torch.Generator().manual_seed(1)
    inputs = {"image": torch.randn(2, 3, 32, 32, generator=generator),
              "depth": torch.randn(2, 1, 32, 32, generator=generator)}
    return model, inputs


@pytest.fixture(scope="module", params=["tuple", "dict"])
def two_input_export(request, two_input, tmp_path_factory):
    """Exported from a tuple of positional inputs (named input_0, input_1) and from a dict of keyword inputs."""
    model, inputs = two_input
    path = tmp_path_factory.mktemp("two_input") / f"{request.param}.onnx"
    if request.param == "tuple":
        export(model, (inputs["image"], inputs["depth"]), path, layers=TWO_INPUT_LAYERS)
        inputs = {"input_0": inputs["image"], "input_1": inputs["depth"]}
    else:
        export(model, inputs, path, layers=TWO_INPUT_LAYERS)
    return model, inputs, path


@pytest.mark.parametrize("layer", TWO_INPUT_LAYERS)
def test_two_input_gradients_equal_autograd(two_input_export, layer):
    model, inputs, path = two_input_export
    score = lambda logits: logits[torch.arange(2), torch.tensor(CLASSES)].sum()  # noqa: E731
    assert_gradients_equal_autograd(path, model, inputs, layer, CLASSES, score)


def test_two_input_round_trip_names_and_dynamic_batch(two_input_export):
    model, inputs, path = two_input_export
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == list(inputs)
    assert [o.name for o in graph.output] == ["output"] + TWO_INPUT_LAYERS
    for batch in (1, 2):  # the example batch and another one
        generator = torch.Generator().manual_seed(batch)
        batch_inputs = {k: torch.randn(batch, *v.shape[1:], generator=generator) for k, v in inputs.items()}
        assert_round_trip(model, path, batch_inputs, TWO_INPUT_LAYERS)


# --- names, structure, metadata -------------------------------------------------------------------------------

class NestedOutputs(nn.Module):
    """Returns (pooled, {"logits": ..., "maps": (features, None, sigmoid(features))})."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        features = self.features(x)
        pooled = features.mean(dim=(2, 3))
        return pooled, {"logits": self.head(pooled), "maps": (features, None, torch.sigmoid(features))}


def test_nested_outputs_are_flattened_and_named_by_path(tmp_path):
    torch.manual_seed(0)
    model = NestedOutputs().eval()
    images = torch.randn(2, 3, 16, 16)
    path = tmp_path / "nested.onnx"
    # The layer's output is also a model output (maps.0): both names are kept.
    export(model, images, path, layers=["features"])
    names = [o.name for o in onnx.load(str(path)).graph.output]
    assert names == ["output_0", "output_1.logits", "output_1.maps.0", "output_1.maps.2", "features"]
    assert_round_trip(model, path, {"input": images}, ["features"])
    score = lambda outputs: outputs[1]["logits"][:, 2].sum()  # noqa: E731
    assert_gradients_equal_autograd(path, model, {"input": images}, "features", 2, score, output="output_1.logits")


def test_output_names_can_be_given(tmp_path):
    model = NestedOutputs().eval()
    path = tmp_path / "named.onnx"
    export(model, torch.randn(1, 3, 8, 8), path, output_names=["pooled", "logits", "maps", "probabilities"],
           input_names=["image"])
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"]
    assert [o.name for o in graph.output] == ["pooled", "logits", "maps", "probabilities"]
    with pytest.raises(ValueError, match="2 output names for the model's 4 outputs"):
        export(model, torch.randn(1, 3, 8, 8), tmp_path / "bad.onnx", output_names=["a", "b"])


class Classifier(nn.Module):
    """Conv, BatchNorm (non-trivial statistics), ReLU, Dropout: eval and train mode give different outputs."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.drop(self.body(x)).mean(dim=(2, 3)))


@pytest.fixture()
def classifier():
    torch.manual_seed(0)
    return _with_batchnorm_statistics(Classifier())


def test_exports_in_eval_mode_and_restores_each_modules_training_flag(classifier, tmp_path):
    classifier.train()
    classifier.head.eval()  # a submodule in eval mode inside a model in training: its flag must survive too
    flags = {name: module.training for name, module in classifier.named_modules()}
    images = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    export(classifier, images, tmp_path / "m.onnx", layers=["body"])
    assert {name: module.training for name, module in classifier.named_modules()} == flags
    onnx_out = run_onnx(tmp_path / "m.onnx", {"input": images.numpy()})["output"]
    with torch.no_grad():
        train_out = copy.deepcopy(classifier)(images).numpy()  # a copy: training updates BatchNorm's statistics
        eval_out = classifier.eval()(images).numpy()
    assert np.abs(onnx_out - eval_out).max() <= ABS_TOL  # running statistics, no dropout
    assert np.abs(onnx_out - train_out).max() > 1e-2  # so the check above can tell the modes apart
    assert_round_trip(classifier, tmp_path / "m.onnx", {"input": images}, ["body"])


def test_layers_given_as_modules_are_named_by_their_module_path(classifier, tmp_path):
    classifier.eval()
    path = tmp_path / "m.onnx"
    export(classifier, torch.randn(2, 3, 16, 16), path, layers=[classifier.body, classifier.body[2]])
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["output", "body", "body.2"]
    assert list(metadata.read(onnx.load(str(path))).layers) == ["body", "body.2"]


def test_metadata(classifier, tmp_path):
    path = tmp_path / "m.onnx"
    preprocessing = {"size": [16, 16], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "channel_order": "RGB"}
    export(classifier.eval(), torch.randn(2, 3, 16, 16), path, layers=["body.0", "body"], preprocessing=preprocessing)
    meta = metadata.read(onnx.load(str(path)))
    assert (meta.framework, meta.framework_version, meta.input_layout) == ("pytorch", torch.__version__, "NCHW")
    # torch does not know which axis of a module's output holds channels: the layouts are left to the graph
    assert meta.layers == {"body.0": metadata.LayerInfo("body.0"), "body": metadata.LayerInfo("body")}
    assert [layer.layout for layer in Explainer(str(path), layer=["body.0", "body"]).layers] == ["NCHW", "NCHW"]
    assert meta.preprocessing == preprocessing


def test_weights_go_beside_the_model_above_the_one_file_limit(classifier, tmp_path, monkeypatch):
    images = torch.randn(2, 3, 16, 16)
    classifier.eval()
    export(classifier, images, tmp_path / "one.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.onnx"]
    # A model over the limit: the limit lowered below this model's size rather than a 2 GB model built.
    monkeypatch.setattr(pytorch, "ONE_FILE_LIMIT", pytorch.weight_bytes(classifier) - 1)
    (tmp_path / "split").mkdir()
    export(classifier, images, tmp_path / "split" / "two.onnx")
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == ["two.onnx", "two.onnx.data"]
    assert any(t.data_location == onnx.TensorProto.EXTERNAL
               for t in onnx.load(str(tmp_path / "split" / "two.onnx"), load_external_data=False).graph.initializer)
    assert_round_trip(classifier, tmp_path / "split" / "two.onnx", {"input": images})


def test_weight_bytes_counts_parameters_and_buffers_once():
    shared = nn.Linear(1000, 1000, device="meta")
    model = nn.Sequential(shared, shared, nn.BatchNorm1d(1000, device="meta"))
    expected = (1000 * 1000 + 1000) * 4 + (4 * 1000) * 4 + 8  # weights, bias; BN weight/bias/mean/var; count
    assert pytorch.weight_bytes(model) == expected


# --- errors -------------------------------------------------------------------------------------------------------

def test_unknown_layer_name_lists_the_closest_valid_names(tmp_path):
    model = ImageAndDepth().eval()
    with pytest.raises(ValueError, match=r"no module named 'merge.fuze'; closest: 'merge.fuse'"):
        export(model, (torch.randn(1, 3, 8, 8), torch.randn(1, 1, 8, 8)), tmp_path / "m.onnx", layers=["merge.fuze"])
    with pytest.raises(ValueError, match=r"no module named 'image_stm'; closest: 'image_stem'"):
        export(model, (torch.randn(1, 3, 8, 8), torch.randn(1, 1, 8, 8)), tmp_path / "m.onnx", layers=["image_stm"])
    assert not (tmp_path / "m.onnx").exists()


class TupleModule(nn.Module):
    def forward(self, x):
        return x.relu(), x.sigmoid()


class ReturnsTuple(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.pair = TupleModule()

    def forward(self, x):
        a, b = self.pair(self.conv(x))
        return a + b


def test_layer_returning_a_tuple_is_refused_with_what_it_returned(tmp_path):
    with pytest.raises(TypeError, match=r"module 'pair' \(TupleModule\) returned a tuple of 2 \(Tensor, Tensor\)"):
        export(ReturnsTuple().eval(), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", layers=["pair"])


def test_layer_that_never_runs_and_colliding_names_are_refused(tmp_path):
    model = ReturnsTuple().eval()
    model.unused = nn.ReLU()
    with pytest.raises(ValueError, match=r"modules \['unused'\] did not run"):
        export(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", layers=["unused"])
    with pytest.raises(ValueError, match=r"repeated: \['conv'\]"):
        export(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", layers=["conv"], output_names=["conv"])
    with pytest.raises(ValueError, match="the model itself is not a layer"):
        export(model, torch.randn(1, 3, 8, 8), tmp_path / "m.onnx", layers=[model])
