"""The scan's inputs and outputs on the quick start's trained model (examples/data/shapes_cnn.onnx): arrays and
files, ground truth that does not fit (skipped with a warning and a note, never a silent wrong score), the
command line, and the report opened in headless Chromium."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from browser import Browser
from examples.shapes import make_shapes
from onnx_gradcam import Explainer, list_layers
from onnx_gradcam import scan
from onnx_gradcam.scanning import SCAN_FAITHFULNESS, rank_rows
from onnx_gradcam.scores.localisation import LOCALISATION, localisation_scores

MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "data",
                     "shapes_cnn.onnx")
LAYERS = ["0.5", "0.10", "0.13"]


@pytest.fixture(scope="module")
def shapes():
    return make_shapes(12, seed=5)


def _boxes_file(path, names, boxes) -> str:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "x0", "y0", "x1", "y1"])
        for name, box in zip(names, boxes):
            writer.writerow([name, *map(int, box)])
    return str(path)


def _image_files(folder, images) -> list[str]:
    folder.mkdir(exist_ok=True)
    names = []
    for index, image in enumerate(images):
        name = f"shape_{index:02d}.png"
        Image.fromarray((image.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(folder / name)
        names.append(name)
    return names


def test_scan_scores_are_the_scores_of_each_layers_maps(shapes):
    images, labels, boxes = shapes
    result = scan(MODEL, images, ground_truth=boxes, layers=LAYERS, methods=["gradcam", "gradcam++"],
                  targets=labels, faithfulness=["average_drop"], batch_size=5, progress=False)
    assert [(row["layer"], row["method"]) for row in result.rows] == [
        (layer, method) for layer in LAYERS for method in ("gradcam", "gradcam++")]
    masks = np.zeros((len(images), 64, 64), bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        mask[y0:y1, x0:x1] = True
    for row in result.rows:
        cams = Explainer(MODEL, layer=row["layer"], method=row["method"])(images, labels).cams
        expected = localisation_scores(cams, masks)
        for name in LOCALISATION:
            assert row[name] == pytest.approx(float(np.nanmean(expected[name])), abs=1e-6), (row["layer"], name)
    assert set(result.directions) == {*LOCALISATION, "average_drop"}
    assert result.ranking == rank_rows(result.rows, result.directions, list(LOCALISATION))


def test_ranking_follows_each_scores_direction():
    rows = [{"a": 0.2, "b": 0.9}, {"a": 0.9, "b": 0.1}, {"a": float("nan"), "b": 0.5}]
    assert rank_rows(rows, {"a": True, "b": False}, ["a"]) == [1, 0, 2]
    assert rank_rows(rows, {"a": True, "b": False}, ["b"]) == [1, 2, 0]
    assert rank_rows(rows, {"a": True, "b": True}, ["a", "b"])[-1] == 2


def test_without_ground_truth_faithfulness_alone_ranks(shapes):
    images, _, _ = shapes
    result = scan(MODEL, images[:4], layers=LAYERS, progress=False)
    assert result.rank_by == list(SCAN_FAITHFULNESS)
    assert not set(LOCALISATION) & set(result.directions)
    assert all(np.isfinite(row["deletion_auc"]) for row in result.rows)


def test_ground_truth_that_does_not_fit_is_skipped_with_a_warning(shapes):
    images, labels, boxes = shapes
    outside = boxes.copy()
    outside[1] = (50, 50, 70, 70)  # past the 64 x 64 image
    with pytest.warns(UserWarning, match=r"image 1 skipped: .*reaches outside the 64x64"):
        result = scan(MODEL, images[:4], ground_truth=outside[:4], layers=LAYERS[-1:], targets=labels[:4],
                      faithfulness=(), progress=False)
    assert result.rows[0]["images"] == 3
    assert len(result.notes) == 1 and "image 1" in result.notes[0]
    kept = [0, 2, 3]  # scored with their own classes, not the skipped image's neighbours'
    cams = Explainer(MODEL, layer=LAYERS[-1])(images[kept], labels[kept]).cams
    masks = np.zeros((3, 64, 64), bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes[kept]):
        mask[y0:y1, x0:x1] = True
    expected = localisation_scores(cams, masks)["energy_pointing_game"].mean()
    assert result.rows[0]["energy_pointing_game"] == pytest.approx(expected, abs=1e-6)
    wrong_size = np.zeros((4, 32, 32), bool)
    wrong_size[:, 4:9, 4:9] = True
    with pytest.raises(ValueError, match=r"no image was scored: image 0 skipped: .*32x32.*64x64"):
        with pytest.warns(UserWarning):
            scan(MODEL, images[:4], ground_truth=wrong_size, layers=LAYERS[-1:], faithfulness=(), progress=False)
    with pytest.raises(ValueError, match="ground truth for 3 images, but 4 images"):
        scan(MODEL, images[:4], ground_truth=boxes[:3], layers=LAYERS[-1:], progress=False)
    with pytest.raises(ValueError, match="rank by scores the scan computes"):
        scan(MODEL, images[:4], layers=LAYERS[-1:], rank_by=["pointing_game"], progress=False)
    with pytest.raises(ValueError, match="nothing to score: give ground truth"):
        scan(MODEL, images[:4], layers=LAYERS[-1:], faithfulness=(), progress=False)


def test_files_without_ground_truth_or_with_a_mask_of_another_size_are_skipped(shapes, tmp_path):
    images, labels, boxes = shapes
    names = _image_files(tmp_path / "images", images[:5])
    masks = tmp_path / "masks"
    masks.mkdir()
    for index, (name, (x0, y0, x1, y1)) in enumerate(zip(names[:4], boxes)):
        size = 48 if index == 2 else 64
        mask = np.zeros((size, size), np.uint8)
        mask[y0:min(y1, size), x0:min(x1, size)] = 255
        Image.fromarray(mask).save(masks / name)
    with pytest.warns(UserWarning) as caught:
        result = scan(MODEL, str(tmp_path / "images"), ground_truth=str(masks), layers=LAYERS[-1:],
                      faithfulness=(), progress=False)
    messages = [str(w.message) for w in caught]
    assert any(names[2] in m and "48x48" in m for m in messages), messages
    assert any(names[4] in m and "no ground truth" in m for m in messages), messages
    assert result.rows[0]["images"] == 3


def test_scan_command_writes_a_report_that_opens_in_chromium(shapes, tmp_path):
    images, _, boxes = shapes
    names = _image_files(tmp_path / "images", images)
    boxes_csv = _boxes_file(tmp_path / "boxes.csv", names[:-1], boxes[:-1])  # the last image has none
    out = tmp_path / "scan"
    done = subprocess.run([sys.executable, "-m", "onnx_gradcam", "scan", MODEL, str(tmp_path / "images"),
                           "--boxes", boxes_csv, "--out", str(out), "--grid-images", "4", "--batch-size", "5"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert f"onnx-gradcam scan: {names[-1]} skipped: no ground truth" in done.stderr
    assert "Use layer" in done.stdout and "report.html" in done.stdout
    table = json.loads((out / "scores.json").read_text())
    assert len(table["rows"]) == len(list_layers(MODEL))
    assert all(row["images"] == len(images) - 1 for row in table["rows"])
    with open(out / "scores.csv") as handle:
        assert len(list(csv.DictReader(handle))) == len(table["rows"])
    try:
        browser = Browser()
    except FileNotFoundError as error:
        pytest.fail(str(error))
    with browser:
        page = browser.open(out / "report.html", evaluate={
            "rows": "document.querySelectorAll('#scores-table tbody tr').length",
            "pictures": "[...document.querySelectorAll('#depth-plot, #picture-grid')].map(i => i.naturalWidth)",
            "recommendation": "document.getElementById('recommendation').textContent"})
    assert page.errors == []
    assert page.values["rows"] == len(table["rows"])
    assert len(page.values["pictures"]) == 2 and min(page.values["pictures"]) > 100
    assert "Use layer" in page.values["recommendation"]


def test_scan_command_takes_preprocessing_overrides(shapes, tmp_path):
    images, _, boxes = shapes
    names = _image_files(tmp_path / "images", images[:2])
    done = subprocess.run([sys.executable, "-m", "onnx_gradcam", "scan", MODEL, str(tmp_path / "images"),
                           "--out", str(tmp_path / "scan"), "--mean", "0.5", "--std", "0.25", "--layer", "0.13",
                           "--faithfulness", "average_drop"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    shifted = scan(MODEL, str(tmp_path / "images"), layers=["0.13"], faithfulness=["average_drop"],
                   preprocessing={"mean": (0.5,), "std": (0.25,)}, progress=False)
    plain = scan(MODEL, str(tmp_path / "images"), layers=["0.13"], faithfulness=["average_drop"], progress=False)
    assert shifted.rows[0]["average_drop"] != pytest.approx(plain.rows[0]["average_drop"], abs=1e-6)
    refused = subprocess.run([sys.executable, "-m", "onnx_gradcam", "scan", MODEL, str(tmp_path / "images"),
                              "--out", str(tmp_path / "scan2"), "--size", "32", "32"],
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "does not fit the model" in refused.stderr and "Traceback" not in refused.stderr
    assert len(names) == 2
