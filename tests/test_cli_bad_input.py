"""A user's mistakes through the command line, run as a subprocess: one line on stderr and no traceback, the
right exit status, the user's files never written (the model's hash is checked after every test). Each test
is a row of the README's bad-input table (tests/test_readme_table.py keeps the two in step)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

import small_models
from onnx_gradcam import Explainer, export_explainer
from onnx_gradcam.files import output_names
from onnx_gradcam.writing import atomic, atomic_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


def cli(*args, cwd, env=None):
    """(exit status, stdout, stderr) of ``python -m onnx_gradcam ARGS``, run on this checkout's code; a
    traceback fails the test whatever the status."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TESTS]), **(env or {})}
    done = subprocess.run([sys.executable, "-m", "onnx_gradcam", *map(str, args)], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout, done.stderr


def error_line(stderr: str) -> str:
    """The one error line (progress bars and usage text aside)."""
    lines = [line for line in stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, stderr
    return lines[0]


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def picture(path, height, width, seed):
    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A folder with the logit model m.onnx, the probability model p.onnx and images in photos/ and more/."""
    folder = tmp_path_factory.mktemp("cli")
    onnx.save(small_models.classifier(), str(folder / "m.onnx"))
    onnx.save(small_models.classifier(softmax=True), str(folder / "p.onnx"))
    for sub in ("photos", "more"):
        (folder / sub).mkdir()
    picture(folder / "photos" / "dup.jpg", 30, 50, 0)
    picture(folder / "photos" / "dup.png", 40, 20, 1)
    picture(folder / "more" / "dup.jpg", 25, 25, 2)
    picture(folder / "photos" / "a.png", 16, 16, 3)
    (folder / "photos" / "broken.png").write_bytes(b"not a png")
    (folder / "empty").mkdir()
    return folder


@pytest.fixture(autouse=True)
def models_untouched(work):
    """Every command of every test leaves the user's models (and images) as they were."""
    before = {path: digest(path) for path in sorted(work.rglob("*")) if path.suffix in (".onnx", ".jpg", ".png")
              and "out" not in path.relative_to(work).parts[0]}
    yield
    assert {path: digest(path) for path in before} == before


def test_export_onto_its_own_model_is_refused(work):
    status, _, stderr = cli("export", "m.onnx", "-o", "m.onnx", cwd=work)
    assert status == 2 and "is the input" in error_line(stderr) and "m.onnx" in error_line(stderr)
    (work / "link.onnx").unlink(missing_ok=True)
    (work / "link.onnx").symlink_to(work / "m.onnx")
    status, _, stderr = cli("export", "link.onnx", "-o", "./m.onnx", cwd=work)  # links resolved
    assert status == 2 and "refusing to overwrite" in error_line(stderr)
    with pytest.raises(ValueError, match="is the input"):
        export_explainer(str(work / "m.onnx"), str(work / "link.onnx"))


def test_images_with_the_same_stem_keep_their_own_outputs(work):
    inputs = ["photos/dup.jpg", "photos/dup.png", "more/dup.jpg"]
    status, _, _ = cli("explain", "m.onnx", *inputs, "--out", "out_dup", cwd=work)
    assert status == 0
    rows = json.loads((work / "out_dup" / "summary.json").read_text())["images"]
    assert [row["image"] for row in rows] == inputs
    names = ["photos/dup.jpg_cam", "photos/dup.png_cam", "more/dup.jpg_cam"]
    assert [row["map"] for row in rows] == [os.path.join("out_dup", n + ".npy") for n in names]
    maps = [np.load(work / row["map"]) for row in rows]
    assert not np.array_equal(maps[0], maps[2]) and not np.array_equal(maps[0], maps[1])  # none overwritten
    assert output_names(["x/dup.jpg", "x/dup.png"]) == ["dup.jpg", "dup.png"]


@pytest.mark.parametrize("option, value, expected", [
    ("--batch-size", "-1", "not a positive whole number"), ("--batch-size", "0", "not a positive whole number"),
    ("--alpha", "5", "not between 0 and 1"), ("--alpha", "-0.1", "not between 0 and 1"),
    ("--std", "0 0 0", "non-zero std"), ("--std", "1 nan 1", "not a finite number"),
    ("--size", "0 16", "not a positive whole number"), ("--batch-size", "two", "not an integer")])
def test_option_values_out_of_range_are_refused(work, option, value, expected):
    status, _, stderr = cli("explain", "m.onnx", "photos", "--out", "out_opt", option, *value.split(), cwd=work)
    assert status == 2 and f"argument {option}" in error_line(stderr) and expected in error_line(stderr)
    assert not (work / "out_opt").exists()


def test_a_folder_with_no_images_is_an_error_listing_where_it_looked(work):
    status, _, stderr = cli("explain", "m.onnx", "empty", "--out", "out_none", cwd=work)
    assert status == 2 and "no images found in 'empty'" in error_line(stderr) and ".png" in error_line(stderr)


@pytest.mark.parametrize("kind", ["truncated", "text", "jpeg", "empty"])
def test_a_file_that_is_no_onnx_model_is_named_in_one_line(work, kind):
    path = work / f"{kind}.onnx"
    whole = (work / "m.onnx").read_bytes()
    if kind == "jpeg":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, format="JPEG")
    else:
        path.write_bytes({"truncated": whole[:len(whole) // 2], "text": b"hello, I am not a model\n",
                          "empty": b""}[kind])
    for command in (["layers", path.name], ["explain", path.name, "photos", "--out", "out_bad"],
                    ["export", path.name, "-o", "out_bad.onnx"]):
        status, _, stderr = cli(*command, cwd=work)
        assert status == 2 and f"'{path.name}'" in error_line(stderr) and "model" in error_line(stderr)
    with pytest.raises(ValueError, match=str(path.name)):
        Explainer(str(path))


def test_an_existing_file_as_out_is_one_line(work):
    (work / "taken.txt").write_text("mine")
    status, _, stderr = cli("explain", "m.onnx", "photos/a.png", "--out", "taken.txt", cwd=work)
    assert status == 2 and "is an existing file, not a folder" in error_line(stderr)
    assert (work / "taken.txt").read_text() == "mine"


def test_offline_weights_are_one_line(work, tmp_path):
    dead_proxy = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
                  "TORCH_HOME": str(tmp_path)}
    status, _, stderr = cli("convert", "resnet18", "--weights", "DEFAULT", "-o", "out_r18.onnx", cwd=work,
                            env=dead_proxy)
    assert status == 2 and "cannot download the DEFAULT weights of resnet18" in error_line(stderr)
    assert not (work / "out_r18.onnx").exists()


def test_size_on_a_fixed_size_model_is_refused(work):
    status, _, stderr = cli("explain", "m.onnx", "photos/a.png", "--out", "out_size", "--size", "32", "32",
                            cwd=work)
    assert status == 2 and "takes 16x16 images only" in error_line(stderr)


def test_a_missing_factory_module_is_one_line(work):
    status, _, stderr = cli("convert", "no_such_module:build", "-o", "out_f.onnx", cwd=work)
    assert status == 2 and "cannot import 'no_such_module'" in error_line(stderr)


def test_version_is_printed(work):
    status, stdout, _ = cli("--version", cwd=work)
    assert status == 0 and stdout.startswith("onnx-gradcam 0.")


def test_repeated_layers_are_averaged_in_explain_as_in_export(work):
    layers = ["--layer", "features", "--layer", "conv"]
    status, stdout, _ = cli("explain", "m.onnx", "photos/a.png", "--out", "out_two", *layers, cwd=work)
    assert status == 0 and "at features, conv" in stdout
    assert json.loads((work / "out_two" / "summary.json").read_text())["layers"] == ["features", "conv"]
    assert cli("export", "m.onnx", "-o", "out_two.onnx", *layers, cwd=work)[0] == 0
    image = (np.asarray(Image.open(work / "photos" / "a.png"), np.float32) / 255).transpose(2, 0, 1)[None]
    session = ort.InferenceSession(str(work / "out_two.onnx"), providers=["CPUExecutionProvider"])
    exported = session.run(["cam"], {"image": image})[0][0]
    from_cli = np.load(work / "out_two" / "a.png_cam.npy")
    api = Explainer(str(work / "m.onnx"), layer=["features", "conv"])(image).cams[0]
    single = Explainer(str(work / "m.onnx"), layer="conv")(image).cams[0]
    np.testing.assert_allclose(from_cli, exported, atol=1e-5)
    np.testing.assert_allclose(from_cli, api, atol=1e-6)
    assert np.abs(from_cli - single).max() > 1e-3  # not the last layer alone


@pytest.mark.parametrize("command", [["explain", "m.onnx", "photos/a.png", "--out", "out_u"],
                                     ["export", "m.onnx", "-o", "out_u.onnx"]])
def test_an_unknown_layer_points_at_the_layers_command(work, command):
    status, _, stderr = cli(*command, "--layer", "featurs", cwd=work)
    line = error_line(stderr)
    assert status == 2 and "`onnx-gradcam layers m.onnx` lists" in line and "'features'" in line
    assert "list_layers" not in line


@pytest.fixture(scope="module")
def gray(work):
    """small_models.gray_net converted by the command line: one channel, its Conv folded into its BatchNorm."""
    status, _, _ = cli("convert", "small_models:gray_net", "-o", "gray.onnx", "--input-size", "16", "16", cwd=work)
    assert status == 0
    return work / "gray.onnx"


def test_a_one_channel_model_converts(gray):
    dims = onnx.load(str(gray)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, 16, 16]
    cams = Explainer(str(gray))(np.random.default_rng(0).random((2, 1, 16, 16)).astype(np.float32)).cams
    assert cams.shape == (2, 16, 16)


def test_a_conv_folded_into_its_batchnorm_is_named(work, gray):
    status, _, stderr = cli("export", gray.name, "-o", "out_g.onnx", "--layer", "conv", cwd=work)
    line = error_line(stderr)
    assert status == 2 and "'conv' was fused away" in line and "use 'bn' (tensor" in line
    with pytest.raises(ValueError, match="fused away.*use 'bn'"):
        Explainer(str(gray), layer="conv")


def test_out_as_an_input_folder_needs_saying_so(work):
    status, _, stderr = cli("explain", "m.onnx", "photos", "--out", "photos", cwd=work)
    assert status == 2 and "--into-input-folder" in error_line(stderr)
    status, _, stderr = cli("explain", "m.onnx", "photos/a.png", "--out", "photos/a.png", cwd=work)
    assert status == 2 and "refusing to overwrite" in error_line(stderr)
    assert cli("explain", "m.onnx", "photos", "--out", "photos/out_maps", cwd=work)[0] == 0
    (work / "more" / "m.onnx").write_bytes((work / "m.onnx").read_bytes())  # a model inside the folder too
    before = digest(work / "more" / "m.onnx")
    assert cli("explain", "more/m.onnx", "more", "--out", "more", "--into-input-folder", cwd=work)[0] == 0
    assert (work / "more" / "dup.jpg_cam.png").exists() and digest(work / "more" / "m.onnx") == before


@pytest.mark.parametrize("model, column", [("m.onnx", "predicted_logit"), ("p.onnx", "predicted_probability")])
def test_the_score_column_says_what_it_holds(work, model, column):
    out = f"out_{column}"
    assert cli("explain", model, "photos/a.png", "--out", out, cwd=work)[0] == 0
    with open(work / out / "summary.csv", newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    value = float(row[column])
    assert json.loads((work / out / "summary.json").read_text())["score"] == column.split("_", 1)[1]
    assert 0 < value <= 1 if column.endswith("probability") else value > 1  # this model's logits exceed 1


def test_every_input_has_one_row_in_input_order(work):
    inputs = ["photos/dup.png", "photos/broken.png", "photos/a.png", "./photos/a.png"]
    status, stdout, stderr = cli("explain", "m.onnx", *inputs, "--out", "out_rows", "--keep-going",
                                 "--batch-size", "2", cwd=work)
    assert status == 0 and "explained 2 of 4 images (1 failed)" in stdout
    rows = json.loads((work / "out_rows" / "summary.json").read_text())["images"]
    assert [(row["image"], row["status"]) for row in rows] == [
        ("photos/dup.png", "explained"), ("photos/broken.png", "failed"), ("photos/a.png", "explained"),
        ("./photos/a.png", "skipped")]
    assert "cannot read image" in rows[1]["reason"] and "the same file as input 3" in rows[3]["reason"]
    assert "failed photos/broken.png" in stderr


def test_a_failed_image_is_a_nonzero_exit_unless_keep_going(work):
    status, _, _ = cli("explain", "m.onnx", "photos/broken.png", "photos/a.png", "--out", "out_stop", cwd=work)
    rows = json.loads((work / "out_stop" / "summary.json").read_text())["images"]
    assert status == 1 and [row["status"] for row in rows] == ["failed", "skipped"]
    assert "--keep-going" in rows[1]["reason"] and not (work / "out_stop" / "a.png_cam.png").exists()
    status, _, _ = cli("explain", "m.onnx", "photos", "--out", "out_folder", cwd=work)  # a folder keeps going
    rows = json.loads((work / "out_folder" / "summary.json").read_text())["images"]
    assert status == 0 and [row["status"] for row in rows].count("explained") == 3
    assert cli("explain", "m.onnx", "photos", "--out", "out_folder", "--no-keep-going", cwd=work)[0] == 1


def test_overlays_are_at_the_original_size_unless_asked(work):
    assert cli("explain", "m.onnx", "photos/dup.jpg", "--out", "out_size_o", cwd=work)[0] == 0
    assert Image.open(work / "out_size_o" / "dup.jpg_cam.png").size == (50, 30)
    assert np.load(work / "out_size_o" / "dup.jpg_cam.npy").shape == (16, 16)
    assert cli("explain", "m.onnx", "photos/dup.jpg", "--out", "out_size_m", "--overlay-size", "model",
               cwd=work)[0] == 0
    assert Image.open(work / "out_size_m" / "dup.jpg_cam.png").size == (16, 16)


def _staged_folder_write(path: str, data: bytes, error: BaseException) -> None:
    with atomic(path) as staged, open(staged, "wb") as handle:
        handle.write(data)
        raise error


def _staged_file_write(path: str, data: bytes, error: BaseException) -> None:
    with atomic_file(path) as handle:
        handle.write(data)
        raise error


@pytest.mark.parametrize("write", [_staged_folder_write, _staged_file_write])
def test_an_interrupted_write_leaves_no_file_under_the_name(tmp_path, write):
    target = tmp_path / "map.npy"
    with pytest.raises(KeyboardInterrupt):
        write(str(target), b"half", KeyboardInterrupt())
    assert list(tmp_path.iterdir()) == []
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        write(str(target), b"half", RuntimeError("disk full"))
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


def test_sixty_mixed_images_give_one_row_each_and_lose_no_output(work, tmp_path):
    """Two folders of 30 with the same names (dup stems across extensions too), a CMYK JPEG, a 16-bit PNG, a
    NaN-valued float TIFF, a 0-byte file and a 1x1 image among them."""
    rng = np.random.default_rng(7)
    sizes = {}
    for folder in ("left", "right"):
        (tmp_path / folder).mkdir()
        for i in range(25):
            name = f"img{i % 10:02d}.{('png', 'jpg', 'bmp')[i // 10]}"
            size = (int(rng.integers(8, 90)), int(rng.integers(8, 90)))
            picture(tmp_path / folder / name, *size, seed=int(rng.integers(1 << 30)))
            sizes[f"{folder}/{name}"] = size[::-1]
    rgb = (rng.random((20, 30, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "left" / "cmyk.jpg")
    Image.fromarray((rng.random((24, 18)) * 65535).astype(np.uint16)).save(tmp_path / "left" / "deep.png")
    floats = rng.random((12, 14)).astype(np.float32)
    floats[3, 4] = np.nan
    Image.fromarray(floats).save(tmp_path / "left" / "nan.tif")
    (tmp_path / "left" / "zero.png").write_bytes(b"")
    picture(tmp_path / "left" / "one.png", 1, 1, seed=3)
    sizes.update({"left/cmyk.jpg": (30, 20), "left/deep.png": (18, 24), "left/nan.tif": (14, 12),
                  "left/one.png": (1, 1)})
    for i in range(5):
        picture(tmp_path / "right" / f"extra{i}.png", 10 + i, 12, seed=i)
        sizes[f"right/extra{i}.png"] = (12, 10 + i)
    out = tmp_path / "out"
    status, stdout, _ = cli("explain", work / "m.onnx", tmp_path / "left", tmp_path / "right", "--out", out,
                            "--batch-size", "7", cwd=work)
    rows = json.loads((out / "summary.json").read_text())["images"]
    names = [os.path.relpath(row["image"], tmp_path) for row in rows]
    assert status == 0 and len(rows) == 60
    assert names == sorted(n for n in names if n.startswith("left/")) + sorted(n for n in names
                                                                                if n.startswith("right/"))
    by_name = dict(zip(names, rows))
    assert by_name["left/zero.png"]["status"] == "failed" and "cannot read image" in by_name["left/zero.png"]["reason"]
    explained = {n: row for n, row in by_name.items() if row["status"] == "explained"}
    assert by_name["left/nan.tif"]["status"] == "failed" and "NaN" in by_name["left/nan.tif"]["reason"]
    assert set(by_name) - set(explained) == {"left/zero.png", "left/nan.tif"}
    overlays = {row["overlay"] for row in explained.values()}
    assert len(overlays) == len(explained) and all(os.path.exists(p) for p in overlays)  # none shared or lost
    for name, row in explained.items():
        assert row["overlay"] == str(out / f"{name}_cam.png")
        assert Image.open(row["overlay"]).size == sizes[name], name
