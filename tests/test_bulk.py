"""Bulk explanation on Ray Data: a local Ray instance (2 CPUs), folders, Parquet and a Dataset as input; the maps
equal the single-process Explainer's, every input has one summary row, a corrupt image fails alone."""

from __future__ import annotations

import io
import os

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from PIL import Image

import onnx_gradcam
import small_models
from blocked_imports import run_python_without
from onnx_gradcam import Explainer, bulk
from onnx_gradcam.files import preprocessing_for
from onnx_gradcam.images import load_picture

IMAGES = 200


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """Two CPUs and a small object store; the workers import the package under test, wherever it lies."""
    package_root = os.path.dirname(os.path.dirname(onnx_gradcam.__file__))
    python_path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20,
             runtime_env={"env_vars": {"PYTHONPATH": python_path}})
    yield
    ray.shutdown()


def _png(seed: int, height: int = 32, width: int = 32) -> bytes:
    pixels = (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)
    encoded = io.BytesIO()
    Image.fromarray(pixels).save(encoded, format="PNG")
    return encoded.getvalue()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "classifier.onnx"
    onnx.save(small_models.classifier(softmax=True), path)
    return str(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """200 PNG images of 32x32, one corrupt .png file, and a text file (not an image: not read)."""
    images = tmp_path_factory.mktemp("images")
    for i in range(IMAGES):
        (images / f"{i:03d}.png").write_bytes(_png(i))
    (images / "broken.png").write_bytes(b"not a png at all")
    (images / "notes.txt").write_text("not an image")
    return images


def _expected(model: str, pictures: list, targets=None) -> list[np.ndarray]:
    """The single-process Explainer's maps, image by image, from the same preprocessing."""
    explainer = Explainer(model)
    preprocessing = preprocessing_for(explainer)
    return [explainer(preprocessing(picture)[None], targets).cams[0] for picture in pictures]


def test_folder_maps_equal_the_explainer_and_every_input_has_one_row(model, folder, tmp_path, monkeypatch):
    monkeypatch.chdir(folder.parent)  # a relative folder: the summary names files by their absolute paths
    result = bulk.explain_dataset(folder.name, model, str(tmp_path / "out"), actors=2, batch_size=16)
    assert (result.images, result.explained, result.failed) == (IMAGES + 1, IMAGES, 1)
    summary = bulk.read_summary(result.output).to_pylist()
    paths = sorted(row["path"] for row in summary)
    assert paths == sorted(str(path) for path in folder.glob("*.png"))  # each input once, the text file not read
    rows = {row["path"]: row for row in summary}
    broken = rows[str(folder / "broken.png")]
    assert broken["status"] == "failed" and "cannot identify image file" in broken["reason"]
    assert broken["predicted_class"] is None

    maps = bulk.read_maps(result.output)
    names = [f"{i:03d}.png" for i in range(IMAGES)]
    assert sorted(maps) == [str(folder / name) for name in names]  # no map for the corrupt file
    expected = _expected(model, [load_picture(str(folder / name)) for name in names])
    for name, cam in zip(names, expected):
        assert maps[str(folder / name)].shape == (small_models.SIZE, small_models.SIZE)
        np.testing.assert_allclose(maps[str(folder / name)], cam, atol=1e-6, rtol=0)
    assert np.ptp([m.mean() for m in maps.values()]) > 0.01  # the maps differ from image to image
    for row in (rows[str(folder / name)] for name in names):
        assert row["status"] == "explained" and row["explained_class"] == row["predicted_class"]
        assert 1 / small_models.CLASSES <= row["predicted_probability"] <= 1


def test_parquet_of_encoded_images_with_a_target_and_overlays(model, tmp_path):
    """One actor holding both CPUs: the reader, asking for none, still runs (asking for one, it never would)."""
    names = [f"photos/{i}.png" for i in range(30)] + ["photos/truncated.png"]
    encoded = [_png(1000 + i) for i in range(30)] + [_png(7)[:100]]
    table = pa.table({"picture": encoded, "name": names, "other": list(range(31))})
    pq.write_table(table, tmp_path / "images.parquet")
    result = bulk.explain_dataset(str(tmp_path / "images.parquet"), model, str(tmp_path / "out"), targets=2,
                                  num_cpus=2, overlays=True, image_column="picture", path_column="name", batch_size=8)
    rows = {row["path"]: row for row in bulk.read_summary(result.output).to_pylist()}
    assert sorted(rows) == sorted(names) and (result.explained, result.failed) == (30, 1)
    assert rows["photos/truncated.png"]["status"] == "failed"
    assert "cannot read image 'photos/truncated.png'" in rows["photos/truncated.png"]["reason"]

    maps = bulk.read_maps(result.output)
    expected = _expected(model, [Image.open(io.BytesIO(data)) for data in encoded[:30]], targets=2)
    for name, cam in zip(names, expected):
        np.testing.assert_allclose(maps[name], cam, atol=1e-6, rtol=0)
        assert rows[name]["explained_class"] == 2
        assert rows[name]["overlay"] == f"{result.output}/overlays/{name}_cam.png"
        assert Image.open(rows[name]["overlay"]).size == (32, 32)  # the picture's own size


def test_a_dataset_of_mixed_sizes_is_explained_at_each_size(tmp_path):
    """A model of symbolic size explains each image at its own: a batch holds two sizes, explained apart."""
    path = tmp_path / "symbolic.onnx"
    onnx.save(small_models.classifier(symbolic_size=True), path)
    sizes = [(24, 24), (32, 40)] * 10
    items = [{"path": f"mem/{i}.png", "image": _png(2000 + i, *size)} for i, size in enumerate(sizes)]
    result = bulk.explain_dataset(ray.data.from_items(items), str(path), str(tmp_path / "out"), batch_size=20)
    assert (result.images, result.explained) == (20, 20)
    maps = bulk.read_maps(result.output)
    expected = _expected(str(path), [Image.open(io.BytesIO(item["image"])) for item in items])
    for item, size, cam in zip(items, sizes, expected):
        assert maps[item["path"]].shape == size
        np.testing.assert_allclose(maps[item["path"]], cam, atol=1e-6, rtol=0)


def test_missing_inputs_and_outputs_that_would_mix_with_inputs_or_an_earlier_run_are_refused(model, folder,
                                                                                               tmp_path):
    with pytest.raises(FileNotFoundError, match="no image, folder or Parquet file at '.*missing'"):
        bulk.explain_dataset([str(folder), str(tmp_path / "missing")], model, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="inside the input folder"):
        bulk.explain_dataset(str(folder), model, str(folder / "out"))
    (tmp_path / "maps").mkdir()
    (tmp_path / "maps" / "old.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="earlier run"):
        bulk.explain_dataset(str(folder), model, str(tmp_path))


def test_without_ray_the_error_says_what_to_install():
    script = """
        try:
            import onnx_gradcam.bulk
        except ImportError as error:
            print(error)
    """
    printed = run_python_without(["ray"], script).stdout.strip()
    assert printed.count("\n") == 0 and printed.endswith("pip install onnx-gradcam[ray]")


def test_explain_command_with_ray_runs_the_bulk_pipeline(model, folder, tmp_path, capsys):
    from onnx_gradcam.cli import main

    out = tmp_path / "ray_out"
    assert main(["explain", model, str(folder), "--out", str(out), "--ray", "--workers", "2", "--target", "1"]) == 0
    printed = capsys.readouterr().out
    assert "200 of 201 images explained (1 failed) by 2 actor(s)" in printed
    rows = bulk.read_summary(str(out)).to_pylist()
    assert len(rows) == IMAGES + 1
    assert {row["explained_class"] for row in rows if row["status"] == "explained"} == {1}
    assert len(os.listdir(out / "overlays")) == IMAGES
    assert main(["explain", model, str(folder), "--out", str(tmp_path / "other"), "--ray", "--resume",
                 "--aug-smooth"]) == 2
    assert "--resume, --aug-smooth cannot be used with --ray" in capsys.readouterr().err
