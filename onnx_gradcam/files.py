"""Explaining image files: read and preprocess them, explain in batches, write overlays, maps and a summary
(summary.json and summary.csv) with one row per input, in input order.

Outputs are named after the image's path below the deepest folder common to all inputs, extension kept
(``photos/dup.jpg`` -> ``dup.jpg_cam.png`` and ``dup.jpg_cam.npy``; ``a/dup.jpg`` and ``b/dup.jpg`` together ->
``a/dup.jpg_cam.png`` and ``b/dup.jpg_cam.png``), so two inputs never share an output. Every file is written
atomically, and none is written over an input.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from dataclasses import dataclass, fields
from typing import Iterable, Optional, Sequence

import numpy as np

from .explainer import Explainer
from .graph.layout import image_hw
from .graph.view import GraphView
from .images import Preprocessing, display_rgb, load_picture
from .pictures import overlay
from .writing import atomic, output_folder, refuse_inputs

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
OVERLAY_SIZES = ("original", "model")
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast"}
_SCORE_KINDS = {"Softmax": "probability", "Sigmoid": "probability", "LogSoftmax": "log_probability"}


@dataclass
class Outcome:
    """One input's row in the summary: ``status`` is ``explained``, ``skipped`` or ``failed`` (with its
    ``reason``). ``score`` is the predicted class's output value, a logit or a probability as
    :func:`score_kind` says (the summary names the column ``predicted_<kind>``)."""

    image: str
    status: str = "explained"
    reason: Optional[str] = None
    predicted_class: Optional[int] = None
    score: Optional[float] = None
    explained_class: Optional[int] = None
    overlay: Optional[str] = None
    map: Optional[str] = None


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


def explain_files(explainer: Explainer, images: Sequence[str], out_dir: str, targets: Optional[int] = None,
                  preprocessing: Optional[Preprocessing] = None, batch_size: int = 16, alpha: float = 0.5,
                  colormap: str = "jet", progress: bool = True, aug_smooth: bool = False, keep_going: bool = True,
                  overlay_size: str = "original") -> list[Outcome]:
    """Explain every image file, one :class:`Outcome` per input in input order (also written to the summary).

    An image that cannot be read or explained fails with its reason; with ``keep_going`` the rest go on,
    without it the run stops there and the inputs after it are skipped. A file given twice (links resolved)
    is explained once. ``overlay_size``: ``original`` (the map resized to the image as read) or ``model``
    (the image resized to the model's input). Maps (.npy) are at the model's input size. A model of symbolic
    image size, with no size given, explains each image at its own size: batches are formed of consecutive
    images of the same size.
    """
    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}: explain at least 1 image per run")
    if overlay_size not in OVERLAY_SIZES:
        raise ValueError(f"overlay size {overlay_size!r}: use {' or '.join(OVERLAY_SIZES)}")
    preprocessing = preprocessing or preprocessing_for(explainer)
    output_folder(out_dir)
    writer = _Writer(explainer, images, out_dir, preprocessing, alpha, colormap, overlay_size)
    outcomes = _outcomes(writer, batch_size, keep_going, progress, targets, aug_smooth)
    writer.summary(outcomes)
    return outcomes


def _outcomes(writer: "_Writer", batch_size: int, keep_going: bool, progress: bool, targets,
              aug_smooth: bool) -> list[Outcome]:
    """Read and explain the inputs batch by batch; an outcome per input, in input order. Without
    ``keep_going`` the first failure ends the run: what is pending is explained, the rest skipped."""
    images = writer.images
    outcomes: dict[int, Outcome] = {}
    pending: list[tuple[int, object]] = []
    for index, read in enumerate(_read(images)):
        new = {index: read} if isinstance(read, Outcome) else {}
        if not new:
            if pending and not writer.batches_with(pending[0][1], read):
                new.update(_explain_pending(writer, pending, targets, aug_smooth))
                pending = []
            pending.append((index, read))
        stop = not keep_going and _first_failure(new) is not None
        if pending and (len(pending) == batch_size or index == len(images) - 1 or stop):
            new.update(_explain_pending(writer, pending, targets, aug_smooth))
            pending = []
        outcomes.update(new)
        failure = _first_failure(new) if not keep_going else None
        if progress:
            show_progress(index + 1, len(images), stopped=failure is not None)
        if failure is not None:
            reason = f"not explained: stopped after {failure!r} failed (--keep-going explains the rest)"
            return [outcomes.get(i) or Outcome(path, "skipped", reason) for i, path in enumerate(images)]
    return [outcomes[i] for i in range(len(images))]


def _read(images: Sequence[str]):
    """Each input's picture, or its :class:`Outcome` where there is nothing to explain: a file given again
    (links resolved), or one that cannot be read."""
    first_of: dict[str, int] = {}
    for index, path in enumerate(images):
        first = first_of.setdefault(os.path.realpath(path), index)
        if first != index:
            yield Outcome(path, "skipped", f"the same file as input {first + 1} ({images[first]!r})")
            continue
        try:
            yield load_picture(path)
        except ValueError as error:
            yield Outcome(path, "failed", str(error))


def _first_failure(outcomes: dict[int, Outcome]) -> Optional[str]:
    """The image of the first failed outcome (by input index), if any failed."""
    return next((outcomes[i].image for i in sorted(outcomes) if outcomes[i].status == "failed"), None)


def _explain_pending(writer: "_Writer", pending: list, targets, aug_smooth: bool) -> list[tuple[int, Outcome]]:
    """Explain the pictures as one batch; if the batch is refused, one by one, so only the bad ones fail."""
    try:
        batch = np.stack([writer.preprocessing(picture) for _, picture in pending])
        result = writer.explainer(batch, targets, aug_smooth=aug_smooth)
    except ValueError as error:
        if len(pending) == 1:
            index, _ = pending[0]
            return [(index, Outcome(writer.images[index], "failed", str(error)))]
        return [done for item in pending for done in _explain_pending(writer, [item], targets, aug_smooth)]
    return [(index, writer.write(index, picture, result, row)) for row, (index, picture) in enumerate(pending)]


class _Writer:
    """Writes one run's overlays, maps and summary into ``out_dir``, never over an input."""

    def __init__(self, explainer, images, out_dir, preprocessing, alpha, colormap, overlay_size):
        self.explainer, self.images, self.out_dir, self.preprocessing = explainer, images, out_dir, preprocessing
        self.alpha, self.colormap, self.overlay_size = alpha, colormap, overlay_size
        self.names = output_names(images)
        self.kind = score_kind(explainer)

    def batches_with(self, picture, other) -> bool:
        """Whether two pictures can share a batch: always at a fixed size, else when their sizes are equal."""
        return self.preprocessing.size is not None or picture.size == other.size

    def write(self, index: int, picture, result, row: int) -> Outcome:
        """Input ``index``'s overlay and map (row ``row`` of ``result``) and its summary row."""
        path, cam = self.images[index], result.cams[row]
        base = os.path.join(self.out_dir, self.names[index])
        os.makedirs(os.path.dirname(base), exist_ok=True)
        try:
            size = self.preprocessing.size if self.overlay_size == "model" else None
            picture = overlay(display_rgb(picture, size), cam, self.alpha, self.colormap)
            overlay_path = self._save(base + "_cam.png", lambda handle: picture.save(handle, format="PNG"))
            map_path = self._save(base + "_cam.npy", lambda handle: np.save(handle, cam))
        except ValueError as error:
            return Outcome(path, "failed", str(error))
        scores = result.outputs[self.explainer.subject.output]
        values = scores[row].reshape(-1) if scores.ndim == 2 else None
        return Outcome(path, predicted_class=int(values.argmax()) if values is not None else None,
                       score=float(values.max()) if values is not None else None,
                       explained_class=int(result.classes[row]) if result.classes is not None else None,
                       overlay=overlay_path, map=map_path)

    def summary(self, outcomes: list[Outcome]) -> None:
        """summary.json (nested, for programs) and summary.csv (one row per input, for spreadsheets)."""
        layers = list(self.explainer.subject.keys)
        rows = [{self._column(k): v for k, v in vars(o).items() if v is not None} for o in outcomes]
        summary = {"layers": layers, "method": self.explainer.method, "score": self.kind, "images": rows}
        self._save(os.path.join(self.out_dir, "summary.json"),
                   lambda handle: handle.write(json.dumps(summary, indent=2).encode()))
        columns = [f.name for f in fields(Outcome)]
        table = io.StringIO()
        writer = csv.writer(table)
        writer.writerow([self._column(c) for c in columns] + ["layer", "method"])
        for outcome in outcomes:
            writer.writerow([_cell(getattr(outcome, c)) for c in columns] + ["+".join(layers), self.explainer.method])
        self._save(os.path.join(self.out_dir, "summary.csv"), lambda handle: handle.write(table.getvalue().encode()))

    def _column(self, field_name: str) -> str:
        """The summary's name for an :class:`Outcome` field: ``score`` is named for what it holds."""
        return f"predicted_{self.kind}" if field_name == "score" else field_name

    def _save(self, path: str, write) -> str:
        refuse_inputs(path, self.images)
        with atomic(path) as staged, open(staged, "wb") as handle:
            write(handle)
        return path


def _cell(value) -> str:
    return "" if value is None else str(value)


def show_progress(done: int, total: int, stopped: bool = False, unit: str = "images") -> None:
    """A one-line progress bar on stderr, redrawn in place; the line ends when done (or stopped)."""
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {unit}")
    if done >= total or stopped:
        sys.stderr.write("\n")
    sys.stderr.flush()
