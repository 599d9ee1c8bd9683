"""Exported explainer models (standalone ONNX, Triton repositories): same maps as the Explainer, in plain
ONNX Runtime, for every gradient method and batch size; configs Triton's own schema accepts."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format

from blocked_imports import run_python_without
from onnx_gradcam import Explainer, export_explainer, export_triton
from onnx_gradcam.cli import main
from onnx_gradcam.methods import GRADIENT_METHODS, HOST_METHODS


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("targets", ["top", "input"])
@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_exported_maps_equal_the_explainer(resnet, tmp_path, method, targets):
    _, images, model_path = resnet
    path = tmp_path / "explainer.onnx"
    export_explainer(model_path, str(path), method=method, targets=targets)
    session = _session(path)
    assert [i.name for i in session.get_inputs()] == ["input"] + (["target_class"] if targets == "input" else [])
    assert [o.name for o in session.get_outputs()] == ["output", "cam"]
    explainer = Explainer(model_path, method=method)
    for batch, classes in ((images.numpy(), [3, -1, 7, 0, 999, 5, -1, 2]), (images.numpy()[5:], [1, 2, 3])):
        feeds = {"input": batch} | ({"target_class": np.array(classes, np.int64)} if targets == "input" else {})
        output, cam = session.run(["output", "cam"], feeds)
        expected = explainer(batch, classes if targets == "input" else None)
        assert cam.shape == (len(batch), 64, 64) and cam.dtype == np.float32
        np.testing.assert_allclose(cam, expected.cams, rtol=0, atol=1e-5)
        np.testing.assert_allclose(output, expected.outputs["output"], rtol=0, atol=1e-5)
        assert 0.0 <= cam.min() and cam.max() <= 1.0


def test_several_layers_export_as_their_combined_map(resnet, tmp_path):
    _, images, model_path = resnet
    path = tmp_path / "two_layers.onnx"
    export_explainer(model_path, str(path), layer=["layer3", "layer4"], method="layercam")
    cam, = _session(path).run(["cam"], {"input": images.numpy()})
    expected = Explainer(model_path, layer=["layer3", "layer4"], method="layercam")(images.numpy()).cams
    np.testing.assert_allclose(cam, expected, rtol=0, atol=1e-5)
    assert json.loads(onnx.load(str(path)).metadata_props[-1].value)["explainer"] == {
        "method": "layercam", "layers": ["layer3", "layer4"], "output": "output", "targets": "top"}


def test_exported_model_runs_where_neither_this_package_nor_torch_can_be_imported(resnet, tmp_path):
    _, images, model_path = resnet
    path = tmp_path / "explainer.onnx"
    export_explainer(model_path, str(path), method="gradcam++", targets="input")
    onnx.checker.check_model(str(path), full_check=True)
    np.save(tmp_path / "images.npy", images.numpy())
    run_python_without(["onnx_gradcam", "converters", "torch", "tensorflow", "keras"], f"""
        import numpy as np, onnxruntime as ort
        session = ort.InferenceSession({str(path)!r}, providers=["CPUExecutionProvider"])
        images = np.load({str(tmp_path / "images.npy")!r})
        cam, = session.run(["cam"], {{"input": images, "target_class": np.arange(8, dtype=np.int64)}})
        np.save({str(tmp_path / "cam.npy")!r}, cam)
    """)
    expected = Explainer(model_path, method="gradcam++")(images.numpy(), list(range(8))).cams
    np.testing.assert_allclose(np.load(tmp_path / "cam.npy"), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", HOST_METHODS)
def test_host_methods_are_refused_with_the_exportable_ones_named(resnet, tmp_path, method):
    with pytest.raises(ValueError, match="cannot be exported.*gradcam, hirescam"):
        export_explainer(resnet[2], str(tmp_path / "x.onnx"), method=method)
    assert not (tmp_path / "x.onnx").exists()


def test_unknown_targets_value_is_refused(resnet, tmp_path):
    with pytest.raises(ValueError, match="'top'.*'input'"):
        export_explainer(resnet[2], str(tmp_path / "x.onnx"), targets="class")


def _model_config(text: str):
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _triton_dims(value_info) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim]


@pytest.mark.parametrize("targets", ["top", "input"])
def test_triton_config_parses_into_model_config_and_names_exactly_the_model_io(resnet, tmp_path, targets):
    from tritonclient.grpc import model_config_pb2

    _, images, model_path = resnet
    folder = export_triton(model_path, str(tmp_path / "repository"), method="xgradcam", targets=targets,
                           max_batch_size=4)
    assert folder == str(tmp_path / "repository" / "resnet18_xgradcam")
    config = _model_config((tmp_path / "repository" / "resnet18_xgradcam" / "config.pbtxt").read_text())
    model = onnx.load(str(tmp_path / "repository" / "resnet18_xgradcam" / "1" / "model.onnx"))
    assert config.name == "resnet18_xgradcam" and config.backend == "onnxruntime"
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
    for declared, actual in ((config.input, model.graph.input), (config.output, model.graph.output)):
        assert [t.name for t in declared] == [t.name for t in actual]
        for entry, info in zip(declared, actual):
            model_dims = _triton_dims(info)
            assert model_dims[0] == -1  # the batch dim, which Triton's dims leave out
            assert list(entry.reshape.shape if entry.HasField("reshape") else entry.dims) == model_dims[1:]
            elem_type = onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type)
            assert model_config_pb2.DataType.Name(entry.data_type) == {
                np.dtype(np.float32): "TYPE_FP32", np.dtype(np.int64): "TYPE_INT64"}[elem_type]
    feeds = {"input": images.numpy()[:4]} | ({"target_class": np.full(4, -1, np.int64)} if targets == "input" else {})
    cam, = _session(f"{folder}/1/model.onnx").run(["cam"], feeds)
    np.testing.assert_allclose(cam, Explainer(model_path, method="xgradcam")(images.numpy()[:4]).cams, atol=1e-5)


def test_fixed_batch_model_needs_max_batch_size_zero(tmp_path):
    from converters.pytorch import export

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    export(net, torch.zeros(1, 3, 16, 16), tmp_path / "fixed.onnx", dynamic_batch=False)
    with pytest.raises(ValueError, match="no dynamic batch dim.*max batch size 0"):
        export_triton(str(tmp_path / "fixed.onnx"), str(tmp_path / "repository"))
    assert not (tmp_path / "repository").exists()
    folder = export_triton(str(tmp_path / "fixed.onnx"), str(tmp_path / "repository"), max_batch_size=0)
    config = _model_config(open(f"{folder}/config.pbtxt").read())
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert [list(t.dims) for t in config.input] == [[1, 3, 16, 16]]
    assert [list(t.dims) for t in config.output] == [[1, 2], [1, 16, 16]]


def test_command_line_export_writes_the_model_and_the_repository(resnet, tmp_path, capsys):
    _, images, model_path = resnet
    assert main(["export", model_path, "-o", str(tmp_path / "x.onnx"), "--triton", str(tmp_path / "repo"),
                 "--name", "explain_resnet", "--method", "hirescam", "--layer", "layer3", "--targets", "input"]) == 0
    assert "wrote" in capsys.readouterr().out
    cam, = _session(tmp_path / "x.onnx").run(["cam"], {"input": images.numpy(),
                                                        "target_class": np.full(8, 4, np.int64)})
    expected = Explainer(model_path, layer="layer3", method="hirescam")(images.numpy(), 4).cams
    np.testing.assert_allclose(cam, expected, rtol=0, atol=1e-5)
    assert (tmp_path / "repo" / "explain_resnet" / "1" / "model.onnx").exists()
    _model_config((tmp_path / "repo" / "explain_resnet" / "config.pbtxt").read_text())


def test_command_line_export_needs_a_destination(resnet, capsys):
    assert main(["export", resnet[2]]) == 2
    assert "-o FILE.onnx, --triton DIR" in capsys.readouterr().err


def test_exported_model_holds_no_dead_nodes_or_weights(resnet, tmp_path):
    _, _, model_path = resnet
    export_explainer(model_path, str(tmp_path / "lean.onnx"))
    Explainer(model_path).save(str(tmp_path / "whole.onnx"))
    lean, whole = onnx.load(str(tmp_path / "lean.onnx")), onnx.load(str(tmp_path / "whole.onnx"))
    read = {name for node in lean.graph.node for name in node.input} | {o.name for o in lean.graph.output}
    assert all(set(node.output) & read for node in lean.graph.node)  # every node feeds something kept
    assert {t.name for t in lean.graph.initializer} <= read
    assert len(lean.graph.node) < len(whole.graph.node)
    assert {o.name for o in whole.graph.output} - {o.name for o in lean.graph.output} >= {"explained_class"}
