"""Image files read faithfully: 16-bit and float pictures scaled by their own range, EXIF orientation applied,
CMYK, palette and alpha converted, as many channels as the model's input has; then explained."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import ModelProto, TensorProto, helper, numpy_helper
from PIL import Image

from onnx_gradcam import Explainer
from onnx_gradcam.images import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, display_rgb, load_picture, pixels

QUICKSTART = "examples/data/shapes_cnn.onnx"


def _ramp16(height: int = 48, width: int = 64) -> np.ndarray:
    """A 16-bit ramp over the whole range, 0 at the top left to 65535 at the bottom right."""
    ramp = np.linspace(0, 65535, height * width).reshape(height, width)
    return np.round(ramp).astype(np.uint16)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_16_bit_gray_picture_is_scaled_not_clipped(tmp_path, suffix):
    """Before: Pillow's conversion to 8 bits clipped it, 99.7% of the pixels read as 255."""
    ramp = _ramp16()
    path = tmp_path / f"gray16{suffix}"
    Image.fromarray(ramp).save(path)
    picture = load_picture(str(path))
    np.testing.assert_allclose(pixels(picture, 1)[..., 0], ramp / 65535, atol=1e-6)
    rgb = Preprocessing(channels=3)(picture)
    assert rgb.shape == (3, 48, 64) and np.array_equal(rgb[0], rgb[2])
    np.testing.assert_allclose(rgb[1], ramp / 65535, atol=1e-6)
    assert (rgb == 1.0).mean() < 0.01
    shown = display_rgb(picture, None)
    np.testing.assert_array_equal(shown[..., 0], np.round(ramp / 65535 * 255).astype(np.uint8))


def test_a_16_bit_picture_resized_keeps_its_levels(tmp_path):
    ramp = _ramp16()
    Image.fromarray(ramp).save(tmp_path / "gray16.png")
    resized = pixels(load_picture(str(tmp_path / "gray16.png")), 1, (24, 32))[..., 0]
    expected = np.asarray(Image.fromarray(ramp.astype(np.float32) / 65535, "F").resize((32, 24), Image.BILINEAR))
    np.testing.assert_allclose(resized, expected, atol=1e-6)
    assert len(np.unique(resized)) > 256  # more levels than 8 bits hold


def test_a_float_tiff_is_read_as_stored_and_a_nan_in_it_is_refused(tmp_path):
    values = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(values).save(tmp_path / "float.tif")
    np.testing.assert_array_equal(pixels(load_picture(str(tmp_path / "float.tif")), 1)[..., 0], values)
    values[10, 10] = np.nan
    Image.fromarray(values).save(tmp_path / "nan.tif")
    row = Preprocessing(channels=3)(load_picture(str(tmp_path / "nan.tif")))
    with pytest.raises(ValueError, match=r"image 0 of 1 in input 'input' holds NaN or inf \(3 NaN, 0 inf\)"):
        Explainer(QUICKSTART)(row[None])


def test_an_exif_rotated_jpeg_is_read_upright(tmp_path):
    """A camera stores the sensor's pixels and an Orientation tag; before, the picture was read on its side."""
    upright = np.zeros((32, 64, 3), np.uint8)
    upright[:16, :32] = 255  # white top-left quadrant of a landscape picture
    stored = Image.fromarray(upright).rotate(90, expand=True)  # as the sensor held it: portrait
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    stored.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    picture = load_picture(str(tmp_path / "rotated.jpg"))
    assert picture.size == (64, 32)
    np.testing.assert_allclose(display_rgb(picture, None), upright, atol=12)


def test_a_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:, :8, 0] = 255  # cyan on the left
    cmyk[:, 8:, 3] = 255  # black on the right
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    rgb = display_rgb(load_picture(str(tmp_path / "cmyk.jpg")), None).astype(int)
    np.testing.assert_allclose(rgb[4, 2], [0, 255, 255], atol=12)
    np.testing.assert_allclose(rgb[4, 13], [0, 0, 0], atol=12)


def test_palette_and_alpha_as_pillow_converts_them(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "palette.png")
    alpha = load_picture(str(tmp_path / "alpha.png"))
    np.testing.assert_array_equal(display_rgb(alpha, None), rgba[..., :3])
    np.testing.assert_array_equal(Preprocessing(channels=4, layout="NHWC")(alpha), rgba / np.float32(255))
    palette = load_picture(str(tmp_path / "palette.png"))
    np.testing.assert_array_equal(display_rgb(palette, None), np.asarray(palette.convert("RGB")))


def test_an_8_bit_picture_reads_as_before(tmp_path):
    """Resized in 8 bits by Pillow, then divided by 255, normalised, BGR where asked."""
    rgb = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    picture = load_picture(str(tmp_path / "rgb.png"))
    before = np.asarray(Image.fromarray(rgb).resize((32, 24), Image.BILINEAR), np.float32) / 255.0
    row = Preprocessing(size=(24, 32), mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.25), channel_order="BGR")(picture)
    expected = (before[..., ::-1] - np.float32([0.5, 0.4, 0.3])) / np.float32([0.2, 0.2, 0.25])
    np.testing.assert_allclose(row, expected.transpose(2, 0, 1), rtol=1e-6)


@pytest.mark.parametrize("shape, layout, channels, size", [
    (["N", 1, 28, 28], "NCHW", 1, (28, 28)), (["N", 64, 48, 4], "NHWC", 4, (64, 48)),
    (["N", 3, "H", "W"], "NCHW", 3, None), (None, "NCHW", 3, None)])
def test_the_channel_count_and_size_come_from_the_input_shape(shape, layout, channels, size):
    preprocessing = Preprocessing.from_input({"mean": [0.5]}, shape, layout)
    assert (preprocessing.channels, preprocessing.size, preprocessing.mean) == (channels, size, (0.5,))


def test_mean_and_std_that_do_not_fit_the_channels_are_refused():
    with pytest.raises(ValueError, match=r"mean \(0.485, 0.456, 0.406\) has 3 values for 1-channel images"):
        Preprocessing(channels=1, mean=(0.485, 0.456, 0.406))
    with pytest.raises(ValueError, match=r"std \(0.0, 0.0, 0.0\) holds a zero"):
        Preprocessing(std=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="1 \\(gray\\), 3 \\(RGB\\) or 4 \\(RGBA\\) channels, not 2"):
        Preprocessing(channels=2)


def _gray_model() -> ModelProto:
    """A 1-channel CNN: Conv 1->4 (edge and level filters), Relu = layer "act", global average pool, Gemm to 3."""
    kernels = np.stack([np.array([[-1, 0, 1]] * 3), np.array([[-1, 0, 1]] * 3).T, np.ones((3, 3)) / 9,
                        np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]])]).astype(np.float32)[:, None]
    weights = {"w": kernels, "b": np.asarray([0.0, 0.0, -0.3, 0.0], np.float32),
               "fc": np.asarray([[1, 0, 0, 0], [0, 1, 0, 0], [0.2, 0.2, 1, 1]], np.float32),
               "fc_b": np.zeros(3, np.float32)}
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["act"]), helper.make_node("GlobalAveragePool", ["act"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc", "fc_b"], ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "gray", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                            ["N", 1, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def test_a_one_channel_model_is_explained_from_image_files(tmp_path):
    """16-bit gray PNG and 8-bit RGB JPEG, each read as the model's one channel at its size."""
    blob = np.zeros((64, 64), np.uint16)
    blob[16:40, 24:48] = 50000
    Image.fromarray(blob).save(tmp_path / "gray16.png")
    rgb = np.zeros((48, 48, 3), np.uint8)
    rgb[:, 24:] = (200, 120, 40)
    Image.fromarray(rgb).save(tmp_path / "colour.jpg", quality=95)
    explainer = Explainer(_gray_model(), layer="act")
    preprocessing = Preprocessing.from_input({}, explainer.subject.view.shape("input"), "NCHW")
    batch = np.stack([preprocessing(load_picture(str(tmp_path / name))) for name in ("gray16.png", "colour.jpg")])
    assert batch.shape == (2, 1, 32, 32)
    assert abs(batch[0, 0, 14, 18] - 50000 / 65535) < 1e-3  # inside the blob, scaled, not clipped to 1
    result = explainer(batch, [0, 0])  # class 0: the vertical-edge filter
    assert np.isfinite(result.cams).all() and (result.cams.reshape(2, -1).max(axis=1) > 0.5).all()
    edge_columns = result.cams[1].mean(axis=0)
    assert edge_columns[15:18].mean() > 5 * edge_columns[:8].mean()  # the colour image's only edge, at x = 16


@pytest.mark.parametrize("size", [None, (24, 32)])
@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA"])
def test_an_8_bit_picture_is_shown_with_the_pixels_the_model_saw(tmp_path, mode, size):
    """display_rgb's uint8 pixels are those the model's floats were scaled from: round(pixels * 255)."""
    rgb = np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert(mode).save(tmp_path / "picture.png")
    picture = load_picture(str(tmp_path / "picture.png"))
    seen = np.round(pixels(picture, 3, size) * 255).astype(np.uint8)
    np.testing.assert_array_equal(display_rgb(picture, size), seen)


@pytest.mark.parametrize("channels, layout, order, mean, std", [
    (3, "NCHW", "RGB", IMAGENET_MEAN, IMAGENET_STD), (3, "NHWC", "BGR", (0.5, 0.4, 0.3), (0.2, 0.3, 0.25)),
    (1, "NCHW", "RGB", (0.5,), (0.25,)), (4, "NHWC", "BGR", (0.1,), (0.7,)), (4, "NCHW", "RGB", (0, 0, 0, 1), (1,) * 4)])
def test_8_bit_levels_are_normalised_bit_for_bit_as_floats_would_be(tmp_path, channels, layout, order, mean, std):
    """The table lookup gives the very float32 values of (levels / 255 - mean) / std, pixel by pixel."""
    rgba = np.random.default_rng(3).integers(0, 256, (30, 20, 4), dtype=np.uint8)
    rgba[0, :4] = [[0, 0, 0, 0], [255, 255, 255, 255], [1, 2, 3, 4], [254, 253, 252, 251]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "picture.png")
    picture = load_picture(str(tmp_path / "picture.png"))
    levels = np.asarray(picture.convert({1: "L", 3: "RGB", 4: "RGBA"}[channels]), np.float32).reshape(30, 20, -1)
    if order == "BGR":
        levels[..., :3] = levels[..., 2::-1].copy()
    expected = (levels / np.float32(255) - np.float32(mean)) / np.float32(std)
    expected = expected.transpose(2, 0, 1) if layout == "NCHW" else expected
    row = Preprocessing(mean=mean, std=std, channel_order=order, layout=layout, channels=channels)(picture)
    assert row.dtype == np.float32 and row.flags.c_contiguous
    np.testing.assert_array_equal(row, expected)
