"""The pipelined ``explain``: a run stopped mid-way and resumed, --no-overlays, batches of one size across the
input, and --resume refusing another run's summary. Real ONNX Runtime sessions throughout; the stopped run is
a subprocess killed by SIGTERM (no handler: the process ends where it is, as in a crash)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from PIL import Image

import small_models
from onnx_gradcam import Explainer
from onnx_gradcam.files import explain_files, find_images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")
ENVIRONMENT = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, TESTS])}


def command(*args) -> list[str]:
    return [sys.executable, "-m", "onnx_gradcam", "explain", *map(str, args)]


def cli(*args, cwd):
    """(exit status, stdout, stderr) of ``onnx-gradcam explain ARGS``; a traceback fails the test."""
    done = subprocess.run(command(*args), cwd=cwd, env=ENVIRONMENT, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout, done.stderr


def csv_rows(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def finished_rows(out) -> int:
    """Rows in the journal (summary.csv, its header aside) so far."""
    return max(len((out / "summary.csv").read_bytes().splitlines()) - 1, 0) if (out / "summary.csv").exists() else 0


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """m.onnx (logits) and p.onnx (probabilities), 16x16 fixed-size models; 80 JPEGs of 480x480 in photos/
    (overlays at that size take tens of ms each, so a run with one writer lasts seconds)."""
    folder = tmp_path_factory.mktemp("pipeline")
    onnx.save(small_models.classifier(), str(folder / "m.onnx"))
    onnx.save(small_models.classifier(softmax=True), str(folder / "p.onnx"))
    (folder / "photos").mkdir()
    rng = np.random.default_rng(0)
    for i in range(80):
        pixels = (rng.random((480, 480, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / "photos" / f"{i:02d}.jpg", quality=80)
    return folder


def test_a_run_stopped_midway_resumes_without_redoing_what_was_done(work):
    out = work / "out_resume"
    first = subprocess.Popen(command("m.onnx", "photos", "--out", out, "--batch-size", "4", "--workers", "1"),
                             cwd=work, env=ENVIRONMENT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while finished_rows(out) < 8 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == -signal.SIGTERM  # killed, not finished
    assert not (out / "summary.json").exists()  # written only at the end
    journal = csv_rows(out / "summary.csv")  # what the killed run had finished, row by row
    done = {row["image"]: os.stat(work / row["map"]).st_mtime_ns for row in journal}
    assert 8 <= len(done) < 80 and all(row["status"] == "explained" for row in journal)
    with open(out / "summary.csv", "a", newline="") as handle:
        handle.write("photos/79.jpg,expl")  # a row a crash cut short

    status, stdout, _ = cli("m.onnx", "photos", "--out", out, "--resume", cwd=work)
    assert status == 0 and "explained 80 of 80 images (0 failed)" in stdout
    assert f"{len(done)} were done already (--resume)" in stdout
    images = [os.path.join("photos", f"{i:02d}.jpg") for i in range(80)]
    for rows in (json.loads((out / "summary.json").read_text())["images"], csv_rows(out / "summary.csv")):
        assert [row["image"] for row in rows] == images  # each once, in input order
        assert all(row["status"] == "explained" for row in rows)
        assert all((work / row["overlay"]).exists() and (work / row["map"]).exists() for row in rows)
    assert {image: os.stat(work / "out_resume" / f"{os.path.basename(image)}_cam.npy").st_mtime_ns
            for image in done} == done  # not rewritten


def test_no_overlays_writes_maps_and_the_summary_and_resume_adds_the_overlays(work):
    out = work / "out_maps"
    assert cli("m.onnx", "photos/00.jpg", "photos/01.jpg", "--out", out, "--no-overlays", cwd=work)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["00.jpg_cam.npy", "01.jpg_cam.npy", "summary.csv",
                                                      "summary.json"]
    assert all(row["overlay"] == "" and row["status"] == "explained" for row in csv_rows(out / "summary.csv"))
    mtime = os.stat(out / "00.jpg_cam.npy").st_mtime_ns
    status, stdout, _ = cli("m.onnx", "photos/00.jpg", "photos/01.jpg", "--out", out, "--resume", cwd=work)
    assert status == 0 and "0 were done already" in stdout  # no overlay yet: not done for a run with overlays
    assert (out / "00.jpg_cam.png").exists() and os.stat(out / "00.jpg_cam.npy").st_mtime_ns != mtime
    status, stdout, _ = cli("m.onnx", "photos/00.jpg", "photos/01.jpg", "--out", out, "--resume",
                            "--no-overlays", cwd=work)
    assert status == 0 and "2 were done already" in stdout


@pytest.mark.parametrize("model, flags, expected", [
    ("m.onnx", ["--method", "gradcam++"], "explained at features with gradcam, this run at features with gradcam++"),
    ("p.onnx", [], "predicted_logit"),  # a probability model: another score column
])
def test_resume_refuses_another_runs_summary(work, model, flags, expected):
    out = work / f"out_refuse_{model}"
    assert cli("m.onnx", "photos/00.jpg", "--out", out, cwd=work)[0] == 0
    before = {name: (out / name).read_bytes() for name in ("summary.csv", "summary.json")}
    status, _, stderr = cli(model, "photos/00.jpg", "photos/01.jpg", "--out", out, "--resume", *flags, cwd=work)
    (line,) = [line for line in stderr.splitlines() if "error:" in line]
    assert status == 2 and "--resume" in line and expected in line
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not (out / "01.jpg_cam.npy").exists()


def test_workers_must_be_a_positive_number(work):
    status, _, stderr = cli("m.onnx", "photos/00.jpg", "--out", work / "out_workers", "--workers", "0", cwd=work)
    assert status == 2 and "--workers" in stderr and not (work / "out_workers").exists()


def test_images_of_one_size_share_a_batch_wherever_they_are(tmp_path):
    """Sizes alternating A B A B ...: two sizes, batches of 4 -> 2 runs (batching consecutive images only
    would take 8); each map equals the image explained alone, rows in input order."""
    sizes = [(20, 12), (9, 31)] * 4
    for i, (height, width) in enumerate(sizes):
        pixels = (np.random.default_rng(i).random((height, width, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
    explainer = Explainer(small_models.classifier(symbolic_size=True), layer="features",
                          providers="CPUExecutionProvider")
    outcomes = explain_files(explainer, find_images([str(tmp_path)]), str(tmp_path / "out"), batch_size=4,
                             progress=False, workers=3)
    assert explainer.runs["explainer"] == 2
    assert [os.path.basename(o.image) for o in outcomes] == [f"{i}.png" for i in range(8)]
    alone = Explainer(small_models.classifier(symbolic_size=True), layer="features", providers="CPUExecutionProvider")
    for outcome, size in zip(outcomes, sizes):
        pixels = np.asarray(Image.open(outcome.image), np.float32).transpose(2, 0, 1)[None] / 255
        cam = np.load(outcome.map)
        assert cam.shape == size
        np.testing.assert_allclose(cam, alone(pixels).cams[0], atol=1e-6)


def test_jpeg_overlays_are_written_at_each_images_size(work, tmp_path):
    out = tmp_path / "jpg"
    photos = sorted((work / "photos").iterdir())[:3]
    status, _, _ = cli(work / "m.onnx", *photos, "--out", out, "--overlay-format", "jpg", cwd=tmp_path)
    assert status == 0
    rows = csv_rows(out / "summary.csv")
    assert [os.path.basename(row["overlay"]) for row in rows] == [f"{p.name}_cam.jpg" for p in photos]
    for row, photo in zip(rows, photos):
        with Image.open(row["overlay"]) as written, Image.open(photo) as original:
            assert written.format == "JPEG" and written.size == original.size
    assert not list(out.glob("*_cam.png"))
