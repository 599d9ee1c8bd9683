"""The quick start's trained model (examples/data/shapes_cnn.onnx) quantised to int8 with ONNX Runtime's
tools, as a user would before deploying it, explains like the float model on 200 held-out images.

Static QDQ quantisation, per channel, calibrated on 64 training-distribution images, with and without
``quant_pre_process``: the maps' Pearson correlation with the float model's (per image, then the mean) is
at least 0.9, and the pointing game (the map's peak inside the object's box) within 3 points of the float
model's. The straight-through estimator carries the gradient through every QuantizeLinear ->
DequantizeLinear pair (onnx_gradcam/autodiff/rules/quantization.py).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from examples.quickstart import peak_inside_box
from examples.shapes import make_shapes
from onnx_gradcam import Explainer

FLOAT_MODEL = os.path.join(os.path.dirname(__file__), "..", "examples", "data", "shapes_cnn.onnx")


class _Calibration(CalibrationDataReader):
    def __init__(self, images: np.ndarray):
        self._batches = iter([{"input": image[None]} for image in images])

    def get_next(self):
        return next(self._batches, None)


LAYERS = {"auto": "auto", "relu_1": "relu_1_DequantizeLinear_Output"}
"""Float layer -> the quantised model's tensor for it: the DequantizeLinear after the QuantizeLinear that
takes the float tensor (whose clip at the zero point is the folded ReLU)."""


@pytest.fixture(scope="module")
def held_out():
    images, labels, boxes = make_shapes(200, seed=2)
    float_cams = {layer: Explainer(FLOAT_MODEL, layer=layer, providers="CPUExecutionProvider")(images, labels).cams
                  for layer in LAYERS}
    return images, labels, boxes, float_cams


@pytest.mark.slow
@pytest.mark.parametrize("layer", sorted(LAYERS))
@pytest.mark.parametrize("pre_processed", [False, True], ids=["plain", "quant_pre_process"])
def test_an_int8_quick_start_model_explains_like_the_float_model(held_out, pre_processed, layer, tmp_path):
    images, labels, boxes, float_maps = held_out
    float_cams = float_maps[layer]
    source = FLOAT_MODEL
    if pre_processed:
        source = str(tmp_path / "pre.onnx")
        # Its symbolic shape inference (onnxruntime.tools) fails on the dynamo export's Flatten ("'NoneType'
        # object is not iterable"); onnx's shape inference and ONNX Runtime's optimiser still run.
        quant_pre_process(FLOAT_MODEL, source, skip_symbolic_shape=True)
    quantized = str(tmp_path / "int8.onnx")
    quantize_static(source, quantized, _Calibration(make_shapes(64, seed=1)[0]), quant_format=QuantFormat.QDQ,
                    per_channel=True)
    explainer = Explainer(quantized, layer=LAYERS[layer], providers="CPUExecutionProvider")
    assert explainer.layers[0].op == "DequantizeLinear"
    cams = explainer(images, labels).cams
    assert np.isfinite(cams).all() and np.ptp(cams, axis=(1, 2)).min() > 0, "an empty map: a zero gradient"
    correlation = np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(cams, float_cams)])
    pointing = peak_inside_box(cams, boxes).mean()
    float_pointing = peak_inside_box(float_cams, boxes).mean()
    print(f"\n{'pre-processed' if pre_processed else 'plain'} at {layer}: mean Pearson {correlation:.4f}, pointing game "
          f"{pointing:.3f} (float {float_pointing:.3f})")
    assert correlation >= 0.9, f"mean Pearson {correlation:.3f}"
    assert abs(pointing - float_pointing) <= 0.03, f"pointing game {pointing:.3f} vs float {float_pointing:.3f}"
