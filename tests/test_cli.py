"""The command line: layers, explain, convert (and convert --explain), errors as one line."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

import small_models
import tiny_cnn
from onnx_gradcam import Explainer
from onnx_gradcam.cli import main


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i in range(3):
        pixels = (np.random.default_rng(i).random((40 + 10 * i, 50, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png at all")
    return folder


@pytest.fixture(scope="module")
def converted(tmp_path_factory, images):
    out = tmp_path_factory.mktemp("convert")
    onnx_path = out / "net.onnx"
    status = main(["convert", "examples.quickstart:build_model", "-o", str(onnx_path), "--input-size", "64", "64",
                   "--layer", "0.9", "--explain", str(images), "--out", str(out / "explained")])
    assert status == 0
    return onnx_path, out / "explained"


def test_convert_factory_keeps_the_layer_and_explains_the_folder(converted, images):
    onnx_path, explained = converted
    summary = json.loads((explained / "summary.json").read_text())
    assert summary["layers"] == ["0.9"]  # the last --layer is the explained one
    rows = {row["image"].split("/")[-1]: row for row in summary["images"]}
    assert rows["broken.png"]["status"] == "failed" and "cannot read" in rows["broken.png"]["reason"]
    for i in range(3):
        row = rows[f"{i}.png"]
        cam = np.load(row["map"])
        assert cam.shape == (64, 64) and 0.0 <= cam.min() and cam.max() <= 1.0
        assert Image.open(row["overlay"]).size == (50, 40 + 10 * i)  # the original's size
        assert row["predicted_class"] == row["explained_class"]


def test_explain_maps_equal_the_api(converted, images, tmp_path):
    onnx_path, _ = converted
    assert main(["explain", str(onnx_path), str(images / "0.png"), "--out", str(tmp_path), "--target", "1"]) == 0
    picture = Image.open(images / "0.png").convert("RGB").resize((64, 64), Image.BILINEAR)
    row = (np.asarray(picture, np.float32) / 255.0).transpose(2, 0, 1)[None]
    expected = Explainer(str(onnx_path))(row, 1).cams[0]
    np.testing.assert_allclose(np.load(tmp_path / "0.png_cam.npy"), expected, atol=1e-6)


def test_layers_prints_a_table_with_framework_names(converted, capsys):
    onnx_path, _ = converted
    assert main(["layers", str(onnx_path)]) == 0
    printed = capsys.readouterr().out
    assert "framework name" in printed and "0.9" in printed and "default (layer='auto')" in printed


def test_errors_are_one_line_and_a_nonzero_status(tmp_path, capsys):
    assert main(["explain", str(tmp_path / "missing.onnx"), "x.png", "--out", str(tmp_path)]) == 2
    message = capsys.readouterr().err.strip()
    assert message.count("\n") == 0 and "missing.onnx" in message


def test_unknown_torchvision_name_suggests_close_ones(tmp_path, capsys):
    assert main(["convert", "resnet5O", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "resnet50" in capsys.readouterr().err


def test_python_dash_m_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "onnx_gradcam", "--help"], capture_output=True, text=True,
                          check=True)
    assert "convert" in done.stdout and "explain" in done.stdout and "layers" in done.stdout


def test_convert_a_saved_keras_file_and_explain(tmp_path, images):
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name="image")
    features = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="features")(inputs)
    logits = keras.layers.Dense(4, name="logits")(keras.layers.GlobalAveragePooling2D()(features))
    saved = tmp_path / "small.keras"
    keras.Model(inputs, logits).save(saved)
    onnx_path = tmp_path / "small.onnx"
    assert main(["convert", str(saved), "-o", str(onnx_path), "--layer", "features", "--explain", str(images),
                 "--out", str(tmp_path / "explained")]) == 0
    summary = json.loads((tmp_path / "explained" / "summary.json").read_text())
    assert summary["layers"] == ["features"]
    explained = [row for row in summary["images"] if row["status"] == "explained"]
    assert len(explained) == 3 and all(np.load(row["map"]).shape == (32, 32) for row in explained)


def test_explain_with_another_method_and_smoothing(converted, images, tmp_path):
    onnx_path, _ = converted
    assert main(["explain", str(onnx_path), str(images / "1.png"), "--out", str(tmp_path), "--method", "layercam",
                 "--aug-smooth", "--eigen-smooth"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    cam = np.load(tmp_path / "1.png_cam.npy")
    # aug_smooth averages six normalised maps (as pytorch-grad-cam does): the peak lies between 1/6 and 1
    assert summary["method"] == "layercam" and 0.0 <= cam.min() and 1 / 6 - 1e-6 <= cam.max() <= 1.0


def test_unknown_method_is_refused_with_the_known_ones(converted, images, tmp_path, capsys):
    onnx_path, _ = converted
    with pytest.raises(SystemExit):
        main(["explain", str(onnx_path), str(images), "--out", str(tmp_path), "--method", "gradkam"])
    assert "gradcam++" in capsys.readouterr().err


def test_explain_a_folder_of_fifty_images_with_one_corrupt(converted, tmp_path, capsys):
    onnx_path, _ = converted
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = {}
    for i in range(50):
        size = (int(rng.integers(40, 120)), int(rng.integers(40, 120)))
        sizes[f"photo_{i:02d}.{'png' if i % 2 else 'jpg'}"] = size[::-1]
        pixels = (rng.random((*size, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"photo_{i:02d}.{'png' if i % 2 else 'jpg'}")
    intact = (folder / "photo_01.png").read_bytes()
    (folder / "photo_50.png").write_bytes(intact[:len(intact) // 2])  # truncated mid-file
    out = tmp_path / "explained"
    assert main(["explain", str(onnx_path), str(folder), "--out", str(out), "--batch-size", "8"]) == 0
    captured = capsys.readouterr()
    assert "51/51 images" in captured.err and "failed" in captured.err and "photo_50.png" in captured.err
    assert "explained 50 of 51 images (1 failed)" in captured.out

    overlays, maps = sorted(out.glob("*_cam.png")), sorted(out.glob("*_cam.npy"))
    assert len(overlays) == 50 and len(maps) == 50
    assert {p.name for p in overlays} == {f"{name}_cam.png" for name in sizes}
    assert all(Image.open(out / f"{name}_cam.png").size == size for name, size in sizes.items())
    assert all(np.load(p).shape == (64, 64) for p in maps)
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".json", ".csv")) == ["summary.csv", "summary.json"]
    rows = json.loads((out / "summary.json").read_text())["images"]
    assert len(rows) == 51 and [r["image"].split("/")[-1] for r in rows if r["status"] == "failed"] == ["photo_50.png"]
    with open(out / "summary.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    layer = Explainer(str(onnx_path)).subject.keys[0]
    assert len(table) == 51 and {(row["layer"], row["method"]) for row in table} == {(layer, "gradcam")}
    explained = [row for row in table if row["status"] == "explained"]
    assert len(explained) == 50
    assert all(row["predicted_class"] == row["explained_class"] and row["predicted_class"] in {"0", "1", "2"}
               and np.isfinite(float(row["predicted_logit"])) for row in explained)


@pytest.mark.parametrize("precision, twinned", [("float32", True), ("model", False)])
def test_export_precision_of_a_float16_model(tmp_path, precision, twinned):
    source = tmp_path / "half.onnx"
    onnx.save(tiny_cnn.model(np.float16), source)
    assert main(["export", str(source), "-o", str(tmp_path / "explainer.onnx"), "--layer", "A",
                 "--precision", precision]) == 0
    nodes = onnx.load(tmp_path / "explainer.onnx").graph.node
    assert any(node.name.endswith("/float32") for node in nodes) == twinned


def test_a_model_of_any_size_explains_a_folder_of_mixed_sizes_without_resizing(tmp_path):
    """Each image at its own size (maps and overlays too); consecutive images of one size share a batch, and
    the maps equal explaining each image alone."""
    model = tmp_path / "any_size.onnx"
    onnx.save(small_models.classifier(symbolic_size=True), model)
    folder = tmp_path / "images"
    folder.mkdir()
    sizes = {"a.png": (20, 12), "b.png": (20, 12), "c.png": (9, 31), "d.png": (20, 12)}
    rng = np.random.default_rng(0)
    for name, (height, width) in sizes.items():
        Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8)).save(folder / name)
    out = tmp_path / "out"
    assert main(["explain", str(model), str(folder), "--out", str(out), "--batch-size", "4", "--layer",
                 "features"]) == 0
    rows = json.loads((out / "summary.json").read_text())["images"]
    assert [row["status"] for row in rows] == ["explained"] * 4
    explainer = Explainer(str(model), layer="features", providers="CPUExecutionProvider")
    for name, size in sizes.items():
        cam = np.load(out / f"{name}_cam.npy")
        assert cam.shape == size and np.ptp(cam) > 0.5
        pixels = np.asarray(Image.open(folder / name), np.float32).transpose(2, 0, 1)[None] / 255
        np.testing.assert_allclose(cam, explainer(pixels).cams[0], atol=1e-6)
        assert Image.open(out / f"{name}_cam.png").size == size[::-1]
