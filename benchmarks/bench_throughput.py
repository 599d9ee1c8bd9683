"""Images per second of ``onnx-gradcam explain`` on a folder of JPEGs, against the bare exported explainer.

ResNet-50 (random weights, exported with ``converters.pytorch.export``), Grad-CAM at the default layer, N
JPEG images of 224x224 (default 512; smooth random colour fields with a little noise, closer to photographs
than white noise, which neither JPEG nor PNG compresses). Rows:

- ``bare exported session``: ``Explainer(...).export(path)``, then a plain ``onnxruntime.InferenceSession``
  run on pre-decoded float32 arrays, batch after batch (decoding and writing excluded: the ceiling).
- ``onnx-gradcam explain``: the command, in process (``onnx_gradcam.cli.main``), timed from the call to its
  return: building the explainer and its session, decoding, explaining, writing overlays, maps and the
  summary. In process, so that Python's start-up and imports (a fixed second or so of any command, not
  explain's work) are not counted; nothing else is subtracted. ``--overlay-format jpg`` and ``--no-overlays``
  as further rows.
- ``pytorch-grad-cam loop``: a plain Python loop over the same files and batch: decode with PIL, its
  ``GradCAM`` at ``model.layer4``, an overlay with ``show_cam_on_image`` saved with PIL, and the map.

Both ONNX Runtime rows use the command's session options (``onnx_gradcam.pipeline.session_options``: full
optimisation, one intra-op thread per core, threads not spinning between runs); torch uses every core with
OMP_WAIT_POLICY=PASSIVE. Each row runs between two runs of the bare session, round after round (``--rounds``),
and its ratio is taken to the mean of those two: on a machine shared with other work the load drifts over
a pass of 512 images, and a ratio to bare runs minutes away measured the drift. The table gives medians
over the rounds.

    python benchmarks/bench_throughput.py [--images 512] [--batch 16] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import sys
import tempfile
import time

ROWS = ("bare exported session", "onnx-gradcam explain", "explain --overlay-format jpg", "explain --no-overlays",
        "pytorch-grad-cam loop")


def _images(folder: str, count: int) -> list[str]:
    """``count`` 224x224 JPEGs: a random 7x7 colour grid resized bicubically, plus noise of 8 levels."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        grid = Image.fromarray((rng.random((7, 7, 3)) * 255).astype(np.uint8)).resize((224, 224), Image.BICUBIC)
        pixels = np.clip(np.asarray(grid, np.float32) + rng.normal(0, 8, (224, 224, 3)), 0, 255).astype(np.uint8)
        paths.append(os.path.join(folder, f"{i:04d}.jpg"))
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def _model(path: str):
    import torch
    import torchvision

    from converters.pytorch import export

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).eval()
    export(model, torch.zeros(2, 3, 224, 224), path)
    return model


def _bare(model_path: str, work: str, paths: list[str], batch: int):
    """The exported explainer in a plain session, and the inputs decoded and preprocessed beforehand."""
    import numpy as np
    import onnxruntime as ort

    from onnx_gradcam import Explainer
    from onnx_gradcam.files import preprocessing_for
    from onnx_gradcam.images import load_picture
    from onnx_gradcam.pipeline import session_options

    explainer = Explainer(model_path, providers="CPUExecutionProvider", session_options=session_options)
    exported = os.path.join(work, "explainer.onnx")
    explainer.export(exported)
    session = ort.InferenceSession(exported, session_options(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    preprocessing = preprocessing_for(explainer)
    arrays = np.stack([preprocessing(load_picture(path)) for path in paths])
    batches = [arrays[start:start + batch] for start in range(0, len(arrays), batch)]
    session.run(None, {name: batches[0]})  # arena and first-run allocations: set-up, as a server would have it

    def run():
        for images in batches:
            session.run(None, {name: images})
    return run


def _command(model_path: str, folder: str, work: str, batch: int, flags: list[str]):
    from onnx_gradcam.cli import main

    def run():
        out = tempfile.mkdtemp(dir=work)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            status = main(["explain", model_path, folder, "--out", out, "--batch-size", str(batch), *flags])
        assert status == 0, status
        shutil.rmtree(out)
    return run


def _pytorch_grad_cam(model, paths: list[str], work: str, batch: int):
    import numpy as np
    import torch
    from PIL import Image
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image

    cam = GradCAM(model=model, target_layers=[model.layer4])
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)

    def run():
        out = tempfile.mkdtemp(dir=work)
        for start in range(0, len(paths), batch):
            chunk = paths[start:start + batch]
            rgb = [np.asarray(Image.open(path).convert("RGB"), np.float32) / 255 for path in chunk]
            tensor = torch.from_numpy(np.stack([((image - mean) / std).transpose(2, 0, 1) for image in rgb]))
            maps = cam(input_tensor=tensor, targets=None)
            for path, image, grayscale in zip(chunk, rgb, maps):
                base = os.path.join(out, os.path.basename(path))
                Image.fromarray(show_cam_on_image(image, grayscale, use_rgb=True)).save(base + "_cam.png")
                np.save(base + "_cam.npy", grayscale)
        shutil.rmtree(out)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="JPEG images (default 512)")
    parser.add_argument("--batch", type=int, default=16, help="images per run, every row (default 16)")
    parser.add_argument("--rounds", type=int, default=2, help="times each row runs, in turn (default 2)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    work = tempfile.mkdtemp(prefix="bench-throughput-")
    try:
        folder = os.path.join(work, "images")
        os.makedirs(folder)
        paths = _images(folder, args.images)
        model_path = os.path.join(work, "resnet50.onnx")
        model = _model(model_path)
        runners = {ROWS[0]: _bare(model_path, work, paths, args.batch),
                   ROWS[1]: _command(model_path, folder, work, args.batch, []),
                   ROWS[2]: _command(model_path, folder, work, args.batch, ["--overlay-format", "jpg"]),
                   ROWS[3]: _command(model_path, folder, work, args.batch, ["--no-overlays"]),
                   ROWS[4]: _pytorch_grad_cam(model, paths, work, args.batch)}
        rates, ratios = _bracketed(runners, args.rounds, args.images)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    from onnx_gradcam.pipeline import default_workers

    print(f"ResNet-50 (random weights), Grad-CAM at the default layer, {args.images} JPEGs of 224x224, batch "
          f"{args.batch}, {os.cpu_count()} CPU cores, {default_workers()} reader and writer threads, "
          f"{args.rounds} rounds, each row between two bare-session runs")
    print(f"{'row':<26}{'images/s':>10}{'x bare session':>16}   per round")
    print(f"{ROWS[0]:<26}{statistics.median(rates[ROWS[0]]):>10.1f}{1:>16.2f}")
    for row in ROWS[1:]:
        rounds = " ".join(f"{ratio:.2f}" for ratio in ratios[row])
        print(f"{row:<26}{statistics.median(rates[row]):>10.1f}{statistics.median(ratios[row]):>16.2f}   {rounds}")


def _bracketed(runners: dict, rounds: int, images: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Images per second of every run of each row, and (but for the bare row) each run's ratio to the mean
    rate of the bare-session runs just before and after it."""
    bare = ROWS[0]
    rates: dict[str, list[float]] = {row: [] for row in ROWS}
    ratios: dict[str, list[float]] = {row: [] for row in ROWS[1:]}
    for _ in range(rounds):
        rates[bare].append(images / _seconds(runners[bare]))
        for row in ROWS[1:]:
            rates[row].append(images / _seconds(runners[row]))
            rates[bare].append(images / _seconds(runners[bare]))
            ratios[row].append(rates[row][-1] / statistics.mean(rates[bare][-2:]))
    return rates, ratios


def _seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
