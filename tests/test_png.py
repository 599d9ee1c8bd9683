"""The overlay PNG encoder: lossless (Pillow reads back every pixel written, its chunk CRCs checked), for
every shape and channel count a PNG holds, and smaller than Pillow's own level-1 file on an overlay."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from onnx_gradcam.pictures import overlay
from onnx_gradcam.png import write_png


def _encoded(pixels: np.ndarray) -> bytes:
    handle = io.BytesIO()
    write_png(handle, pixels)
    return handle.getvalue()


def _decoded(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as picture:
        picture.load()  # a wrong CRC or a broken deflate stream fails here
        return np.asarray(picture)


@pytest.mark.parametrize("shape", [(37, 53, 3), (1, 1, 3), (1, 40, 3), (40, 1, 3), (23, 17), (23, 17, 1),
                                   (19, 29, 4)])
def test_every_pixel_reads_back_as_written(shape):
    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)  # noise: every residual occurs
    pixels.flat[:4] = [0, 255, 0, 255]  # the Up filter's wrap-around at both ends
    read = _decoded(_encoded(pixels))
    np.testing.assert_array_equal(read, pixels.reshape(read.shape))
    assert read.shape[:2] == shape[:2]


def test_an_overlay_is_smaller_than_pillows_level_1_file():
    rows, cols = np.mgrid[0:224, 0:224]
    photo = np.stack([rows, cols, (rows + cols) // 2], axis=-1).astype(np.uint8)
    photo = np.clip(photo + np.random.default_rng(1).normal(0, 8, photo.shape), 0, 255).astype(np.uint8)
    cam = np.exp(-((rows - 100) ** 2 + (cols - 130) ** 2) / (2 * 40.0 ** 2)).astype(np.float32)
    pixels = np.asarray(overlay(photo, cam))
    pillow = io.BytesIO()
    Image.fromarray(pixels).save(pillow, format="PNG", compress_level=1)
    ours = _encoded(pixels)
    np.testing.assert_array_equal(_decoded(ours), pixels)
    assert len(ours) < len(pillow.getvalue()) < pixels.nbytes


@pytest.mark.parametrize("pixels", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4, 2), np.uint8),
                                    np.zeros((0, 4, 3), np.uint8), np.zeros((2, 4, 4, 3), np.uint8)])
def test_pixels_a_png_cannot_hold_are_refused(pixels):
    with pytest.raises(ValueError, match=r"uint8 pixels, not"):
        write_png(io.BytesIO(), pixels)
