"""Example (e): a deployed ONNX model explained where neither torch nor TensorFlow can be imported."""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from blocked_imports import run_python_without

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
CLASSES = ("circle", "square", "triangle")  # the quick start's classes; the pictures are named after theirs


def test_deployed_model_is_explained_without_torch_or_tensorflow(tmp_path):
    run_python_without(["torch", "torchvision", "tensorflow", "keras", "tf2onnx", "converters"], f"""
        import json, sys
        sys.path.insert(0, {EXAMPLES!r})
        import deployed_model
        result = deployed_model.main(["--out", {str(tmp_path)!r}])
        loaded = sorted({{name.split(".")[0] for name in sys.modules}} & {{"torch", "tensorflow", "keras"}})
        json.dump({{"difference": result["difference"], "loaded": loaded}}, open({str(tmp_path / "r.json")!r}, "w"))
    """)
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["loaded"] == [] and result["difference"] <= 1e-5
    rows = json.loads((tmp_path / "summary.json").read_text())["images"]
    pictures = sorted(name for name in os.listdir(os.path.join(EXAMPLES, "data")) if name.endswith(".png"))
    assert [os.path.basename(row["image"]) for row in rows] == pictures and len(pictures) >= 6
    for row in rows:
        assert row["status"] == "explained"
        cam = np.load(row["map"])
        assert cam.shape == (64, 64) and 0.0 <= cam.min() and cam.max() <= 1.0
        assert Image.open(row["overlay"]).size == (64, 64)
    # the shipped model is the trained quick-start model: it recognises the shipped pictures' shapes
    labels = [CLASSES.index(os.path.splitext(name)[0].split("_")[-1]) for name in pictures]
    assert np.mean([row["predicted_class"] == label for row, label in zip(rows, labels)]) >= 5 / 6
    assert (tmp_path / "explainer.onnx").exists()
