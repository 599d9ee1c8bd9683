"""Pictures: colormaps, overlays and labelled grids (pillow and numpy only)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from onnx_gradcam.pictures import colorize, grid, overlay


@pytest.mark.parametrize("colormap", ["jet", "turbo", "viridis"])
def test_colormaps_run_from_dark_to_bright_ends(colormap):
    colors = colorize(np.linspace(0, 1, 256)[None], colormap)[0].astype(int)
    assert colors.shape == (256, 3) and colors.dtype == int
    assert np.abs(np.diff(colors, axis=0)).max() <= 8  # smooth: no jumps between neighbouring values
    assert len({tuple(c) for c in colors}) > 100


def test_jet_is_blue_for_low_and_red_for_high():
    low, high = colorize(np.array([[0.1, 0.9]]), "jet")[0]
    assert low[2] > 200 and low[0] < 50 and high[0] > 200 and high[2] < 50


def test_overlay_opacity_blends_the_map_over_the_image():
    image = np.full((8, 10, 3), 100, np.uint8)
    cam = np.tile(np.linspace(0, 1, 10), (8, 1))
    assert np.array_equal(np.asarray(overlay(image, cam, alpha=0.0)), image)
    assert np.array_equal(np.asarray(overlay(image, cam, alpha=1.0)), colorize(cam))
    half = np.asarray(overlay(image, cam, alpha=0.5)).astype(float)
    np.testing.assert_allclose(half, (image + colorize(cam).astype(float)) / 2, atol=0.51)


def test_overlay_resizes_the_map_and_takes_float_grey_images():
    picture = overlay(np.random.default_rng(0).random((30, 40)), np.zeros((6, 8)), alpha=0.3, colormap="viridis")
    assert picture.size == (40, 30) and picture.mode == "RGB"


def test_unknown_colormap_names_the_known_ones():
    with pytest.raises(ValueError, match="jet, turbo, viridis"):
        colorize(np.zeros((2, 2)), "hot")


def test_grid_lays_out_labelled_tiles_row_by_row():
    image = np.zeros((20, 40, 3), np.uint8)
    maps = {name: np.full((20, 40), value) for name, value in (("gradcam", 0.0), ("layercam", 1.0), ("x", 0.5))}
    sheet = grid(image, maps, cell=100, alpha=1.0)
    assert isinstance(sheet, Image.Image)
    pixels = np.asarray(sheet)
    tile_height = 50  # 100 wide, at the image's 1:2 aspect
    label_height = (pixels.shape[0] // 2) - tile_height
    assert sheet.size == (200, 2 * (tile_height + label_height))  # four tiles (image first) in a 2 x 2 grid
    labels = pixels[:label_height]
    assert (labels < 128).any() and (labels == 255).mean() > 0.8  # dark text on white

    def tile(row: int, column: int) -> np.ndarray:
        top = row * (tile_height + label_height) + label_height
        return pixels[top:top + tile_height, column * 100:(column + 1) * 100]

    assert tile(0, 0).max() == 0  # the image itself (black)
    assert np.array_equal(tile(0, 1)[5, 5], colorize(np.array([[0.0]]))[0, 0])
    assert np.array_equal(tile(1, 0)[5, 5], colorize(np.array([[1.0]]))[0, 0])


def test_grid_columns_and_without_the_image():
    maps = {str(i): np.zeros((10, 10)) for i in range(5)}
    assert grid(np.zeros((10, 10, 3)), maps, columns=5, cell=50, show_image=False).size[0] == 250
    with pytest.raises(ValueError, match="at least one map"):
        grid(np.zeros((10, 10, 3)), {})
