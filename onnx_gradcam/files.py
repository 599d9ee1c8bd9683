"""Explaining image files: read and preprocess them, explain in batches, write overlays, maps and a summary
(summary.json and summary.csv) with one row per input, in input order. The three stages overlap
(:mod:`onnx_gradcam.pipeline`); the summary is kept as the run goes, so a stopped run can be resumed
(:mod:`onnx_gradcam.summary`).

Outputs are named after the image's path below the deepest folder common to all inputs, extension kept
(``photos/dup.jpg`` -> ``dup.jpg_cam.png`` and ``dup.jpg_cam.npy``; ``a/dup.jpg`` and ``b/dup.jpg`` together ->
``a/dup.jpg_cam.png`` and ``b/dup.jpg_cam.png``), so two inputs never share an output. Every file is written
atomically, and none is written over an input.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import os
import sys
from typing import BinaryIO, Callable, Iterable, Optional, Sequence, Union

import numpy as np
from PIL import Image

from . import pipeline
from .explainer import Explainer
from .graph.layout import image_hw
from .graph.view import GraphView
from .images import Preprocessing, display_rgb, load_picture
from .pictures import overlay_pixels
from .pipeline import Read, Stages, default_workers
from .png import write_png
from .summary import Outcome, Summary
from .writing import atomic_file, output_folder, refuse_inputs, same_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
OVERLAY_SIZES = ("original", "model")
OVERLAY_FORMATS: dict[str, Callable[[BinaryIO, np.ndarray], None]] = {
    "png": write_png,
    "jpg": lambda handle, pixels: Image.fromarray(pixels).save(handle, format="JPEG", quality=90)}
"""How overlays are encoded. At tens of images a second the encoder is the command's largest cost besides the
session. PNG by :func:`~onnx_gradcam.png.write_png`: 0.9 ms for a 224x224 overlay of a photograph-like image,
where Pillow took 4.3 ms at zlib level 1 and 14 ms at its default 6. JPEG at quality 90: 0.2 ms, for a file a
fifth the size, lossy as a photograph already is."""


@dataclass(frozen=True)
class OverlayStyle:
    """How overlays look and are written: map opacity, colormap, at the ``original`` image's size or the
    ``model``'s, and the file format (a key of ``OVERLAY_FORMATS``)."""

    alpha: float = 0.5
    colormap: str = "jet"
    size: str = "original"
    format: str = "png"

    def __post_init__(self):
        if self.size not in OVERLAY_SIZES:
            raise ValueError(f"overlay size {self.size!r}: use {' or '.join(OVERLAY_SIZES)}")
        if self.format not in OVERLAY_FORMATS:
            raise ValueError(f"overlay format {self.format!r}: use {' or '.join(OVERLAY_FORMATS)}")
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}
_SCORE_KINDS = {"Softmax": "probability", "Sigmoid": "probability", "LogSoftmax": "log_probability"}


def find_images(paths: Iterable[str]) -> list[str]:
    """Files as given, and the image files inside folders (sorted); an error naming the paths searched when
    that finds no image at all."""
    paths = list(paths)
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(os.path.join(path, name) for name in os.listdir(path)
                            if name.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.exists(path):
            found.append(path)
        else:
            raise FileNotFoundError(f"no image or folder at {path!r}")
    if not found:
        raise ValueError(f"no images found in {', '.join(repr(p) for p in paths)} (looked for files ending "
                         f"{', '.join(IMAGE_SUFFIXES)})")
    return found


def input_folders(paths: Iterable[str]) -> list[str]:
    """The folders holding input images: folders given, and the folders of files given."""
    return sorted({path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)) for path in paths})


def output_names(images: Sequence[str]) -> list[str]:
    """Each image's path below the deepest folder common to all of them, extension kept: distinct for
    distinct paths, so outputs never collide."""
    absolute = [os.path.abspath(path) for path in images]
    if not absolute:
        return []
    common = os.path.commonpath([os.path.dirname(path) for path in absolute])
    return [os.path.relpath(path, common) for path in absolute]


def score_kind(explainer: Explainer) -> str:
    """What the explained output holds (:func:`output_kind`)."""
    return output_kind(explainer.subject.view, explainer.subject.output)


def output_kind(view: GraphView, tensor: str) -> str:
    """What output ``tensor`` holds: ``probability`` (after Softmax or Sigmoid), ``log_probability``
    (after LogSoftmax), else ``logit``; reshapes and casts in between are looked through."""
    node = view.producer.get(tensor)
    while node is not None and node.op_type in _PASS_THROUGH:
        node = view.producer.get(node.input[0])
    return _SCORE_KINDS.get(node.op_type, "logit") if node is not None else "logit"


def preprocessing_for(explainer: Explainer, overrides: Optional[dict] = None) -> Preprocessing:
    """The model's own preprocessing (metadata, input shape and channel count), with the user's ``overrides``
    on top; a size a fixed-size model cannot take is refused here, before any image is read."""
    shape = explainer.subject.view.shape(explainer.subject.image_input) or []
    spatial = image_hw(shape, explainer.subject.image_layout)
    size = tuple(spatial) if len(spatial) == 2 and all(isinstance(d, int) for d in spatial) else None
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if size and overrides.get("size") and tuple(overrides["size"]) != size:
        raise ValueError(f"size {' '.join(map(str, overrides['size']))} does not fit the model: its input "
                         f"{explainer.subject.image_input!r} takes {size[0]}x{size[1]} images only; leave the size "
                         "out (it is read from the model)")
    values = {**explainer.metadata.preprocessing, **overrides}
    return Preprocessing.from_input(values, shape, explainer.subject.image_layout)


def chosen_preprocessing(explainer: Explainer, preprocessing: Union[Preprocessing, dict, None]) -> Preprocessing:
    """``preprocessing`` as given, or the model's own (:func:`preprocessing_for`) with the overrides it holds
    (a dict, or None for none)."""
    if isinstance(preprocessing, Preprocessing):
        return preprocessing
    return preprocessing_for(explainer, preprocessing)


def explain_files(explainer: Explainer, images: Sequence[str], out_dir: str, targets: Optional[int] = None,
                  preprocessing: Optional[Preprocessing] = None, batch_size: int = 16, alpha: float = 0.5,
                  colormap: str = "jet", progress: bool = True, aug_smooth: bool = False, keep_going: bool = True,
                  overlay_size: str = "original", workers: Optional[int] = None, resume: bool = False,
                  overlays: bool = True, overlay_format: str = "png") -> list[Outcome]:
    """Explain every image file, one :class:`Outcome` per input in input order (also written to the summary).

    Reading, explaining and writing overlap (:mod:`onnx_gradcam.pipeline`): ``workers`` threads read and as
    many write (default :func:`~onnx_gradcam.pipeline.default_workers`). An image that cannot be read or
    explained fails with its reason; with ``keep_going`` the rest go on, without it the run stops there and
    the inputs not reached are skipped. A file given twice (links resolved) is explained once.
    ``overlay_size``: ``original`` (the map resized to the image as read) or ``model`` (the image resized to
    the model's input); ``overlay_format``: ``png`` or ``jpg`` (``<name>_cam.png`` or ``_cam.jpg``);
    ``overlays=False`` writes maps and the summary only. Maps (.npy) are at the model's
    input size. A model of symbolic image size, with no size given, explains each image at its own size:
    batches are formed of images of one size. ``resume``: images the summary already holds as explained,
    with their outputs on disk, are kept as they are (``Outcome.resumed``), the others explained.
    """
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}: explain at least 1 image per run")
    if workers is not None and workers < 1:
        raise ValueError(f"workers {workers}: read and write with at least 1 thread")
    style = OverlayStyle(alpha, colormap, overlay_size, overlay_format)
    preprocessing = preprocessing or preprocessing_for(explainer)
    output_folder(out_dir)
    files = _FileStages(explainer, images, out_dir, preprocessing, targets, aug_smooth, style if overlays else None)
    summary = Summary(out_dir, explainer.subject.keys, explainer.method, score_kind(explainer), images)
    try:
        outcomes = _known(images, summary.start(resume), files)
        bar = _Progress(len(images), len(outcomes), progress)

        def done(_: int, outcome: Outcome) -> None:
            summary.append(outcome)
            bar.advance()

        todo = [index for index in range(len(images)) if index not in outcomes]
        ran, failure = pipeline.run(todo, Stages(files.read, files.explain, files.write, done), batch_size,
                                    workers or default_workers(), keep_going)
        bar.end()
        outcomes.update(ran)
        stopped = failure and f"not explained: stopped after {failure.image!r} failed (--keep-going explains the rest)"
        result = [outcomes.get(i) or Outcome(path, "skipped", stopped) for i, path in enumerate(images)]
        summary.finish(result)
    finally:
        summary.close()
    return result


def _known(images: Sequence[str], previous: dict[str, Outcome], files: "_FileStages") -> dict[int, Outcome]:
    """The outcomes known before anything is read: a file given again (links resolved) is skipped, and an
    image an earlier run explained, its outputs on disk, keeps that run's row."""
    known: dict[int, Outcome] = {}
    first_of: dict[str, int] = {}
    for index, path in enumerate(images):
        real = os.path.realpath(path)
        first = first_of.setdefault(real, index)
        if first != index:
            known[index] = Outcome(path, "skipped", f"the same file as input {first + 1} ({images[first]!r})")
        elif real in previous and files.written(index, previous[real]):
            known[index] = dataclasses.replace(previous[real], image=path)
    return known


class _FileStages:
    """The pipeline's stages for image files: read and preprocess, explain a batch, write the overlay (unless
    ``overlay`` is None) and the map into ``out_dir``."""

    def __init__(self, explainer: Explainer, images: Sequence[str], out_dir: str, preprocessing: Preprocessing,
                 targets, aug_smooth: bool, overlay: Optional[OverlayStyle]):
        self.explainer, self.images, self.preprocessing = explainer, images, preprocessing
        self.targets, self.aug_smooth, self.overlay = targets, aug_smooth, overlay
        bases = [os.path.join(out_dir, name) for name in output_names(images)]
        self.maps = [base + "_cam.npy" for base in bases]
        self.overlays = [f"{base}_cam.{overlay.format if overlay else 'png'}" for base in bases]
        self._inputs = {os.path.realpath(path): path for path in images}  # one look-up per file written

    def written(self, index: int, outcome: Outcome) -> bool:
        """Whether an earlier run's ``outcome`` for input ``index`` names the outputs this run writes for it,
        and they exist."""
        wanted = [(outcome.map, self.maps[index])] + ([(outcome.overlay, self.overlays[index])] if self.overlay else [])
        return outcome.status == "explained" and all(
            old is not None and same_file(old, new) and os.path.exists(new) for old, new in wanted)

    def read(self, index: int) -> Union[Read, Outcome]:
        path = self.images[index]
        try:
            picture = load_picture(path)
            return Read(path, self.preprocessing(picture), picture if self.overlay else None)
        except ValueError as error:
            return Outcome(path, "failed", str(error))

    def explain(self, reads: list[Read]):
        return self.explainer(np.stack([read.array for read in reads]), self.targets, aug_smooth=self.aug_smooth)

    def write(self, index: int, read: Read, result, row: int) -> Outcome:
        """Input ``index``'s overlay and map (row ``row`` of ``result``), and its outcome."""
        cam, overlay_path = result.cams[row], None
        os.makedirs(os.path.dirname(self.maps[index]), exist_ok=True)
        try:
            if self.overlay:
                style = self.overlay
                size = self.preprocessing.size if style.size == "model" else None
                pixels = overlay_pixels(display_rgb(read.picture, size), cam, style.alpha, style.colormap)
                encode = OVERLAY_FORMATS[style.format]
                overlay_path = self._save(self.overlays[index], lambda handle: encode(handle, pixels))
            map_path = self._save(self.maps[index], lambda handle: np.save(handle, cam))
        except ValueError as error:
            return Outcome(read.image, "failed", str(error))
        scores = result.outputs[self.explainer.subject.output]
        values = scores[row].reshape(-1) if scores.ndim == 2 else None
        return Outcome(read.image, predicted_class=int(values.argmax()) if values is not None else None,
                       score=float(values.max()) if values is not None else None,
                       explained_class=int(result.classes[row]) if result.classes is not None else None,
                       overlay=overlay_path, map=map_path)

    def _save(self, path: str, write) -> str:
        source = self._inputs.get(os.path.realpath(path))
        if source is not None:
            refuse_inputs(path, [source])
        with atomic_file(path) as handle:
            write(handle)
        return path


class _Progress:
    """The progress bar of one run, ``done`` of ``total`` images known at the start; drawn if ``shown``."""

    def __init__(self, total: int, done: int, shown: bool):
        self.total, self.done, self.shown, self.drawn = total, done, shown, -1

    def advance(self) -> None:
        self.done += 1
        if self.shown:
            show_progress(self.done, self.total)
            self.drawn = self.done

    def end(self) -> None:
        """End the bar's line where the run stopped short of the total (or had nothing left to do)."""
        if self.shown and self.drawn < self.total:
            show_progress(self.done, self.total, stopped=True)


def show_progress(done: int, total: int, stopped: bool = False, unit: str = "images") -> None:
    """A one-line progress bar on stderr, redrawn in place; the line ends when done (or stopped)."""
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {unit}")
    if done >= total or stopped:
        sys.stderr.write("\n")
    sys.stderr.flush()
