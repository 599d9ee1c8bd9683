"""Explaining image files: read and preprocess them, explain in batches, write overlays, maps and a summary
(summary.json and summary.csv)."""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass, fields
from typing import Iterable, Optional, Sequence

import numpy as np

from .explainer import Explainer
from .graph.layout import image_hw
from .images import Preprocessing, display_rgb, load_picture
from .pictures import overlay

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class Outcome:
    """One image's line in the summary."""

    image: str
    predicted_class: Optional[int] = None
    score: Optional[float] = None
    explained_class: Optional[int] = None
    overlay: Optional[str] = None
    map: Optional[str] = None
    error: Optional[str] = None


def find_images(paths: Iterable[str]) -> list[str]:
    """Files as given, and the image files inside folders (sorted)."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(os.path.join(path, name) for name in os.listdir(path)
                            if name.lower().endswith(IMAGE_SUFFIXES))
        elif os.path.exists(path):
            found.append(path)
        else:
            raise FileNotFoundError(f"no image or folder at {path!r}")
    return found


def preprocessing_for(explainer: Explainer, overrides: Optional[dict] = None) -> Preprocessing:
    """The model's own preprocessing (metadata, input shape), with the user's ``overrides`` on top."""
    shape = explainer.subject.view.shape(explainer.subject.image_input) or []
    spatial = image_hw(shape, explainer.subject.image_layout)
    size = spatial if len(spatial) == 2 and all(isinstance(d, int) for d in spatial) else None
    values = {**explainer.metadata.preprocessing, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return Preprocessing.from_metadata(values, explainer.subject.image_layout, size)


def explain_files(explainer: Explainer, images: Sequence[str], out_dir: str, targets: Optional[int] = None,
                  preprocessing: Optional[Preprocessing] = None, batch_size: int = 16, alpha: float = 0.5,
                  colormap: str = "jet", progress: bool = True, aug_smooth: bool = False) -> list[Outcome]:
    """Explain every image file; unreadable ones are reported in the summary and skipped, never fatal."""
    os.makedirs(out_dir, exist_ok=True)
    preprocessing = preprocessing or preprocessing_for(explainer)
    if preprocessing.size is None:
        raise ValueError("the model's input size is not fixed: give the size to resize images to")
    outcomes: list[Outcome] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        pictures, rows, kept = [], [], []
        for path in chunk:
            try:
                picture = load_picture(path)
            except ValueError as error:
                outcomes.append(Outcome(image=path, error=str(error)))
                continue
            pictures.append(picture)
            rows.append(preprocessing(picture))
            kept.append(path)
        if rows:
            outcomes += _explain_batch(explainer, kept, pictures, np.stack(rows), out_dir, targets, preprocessing,
                                       alpha, colormap, aug_smooth)
        if progress:
            _progress(min(start + batch_size, len(images)), len(images))
    _write_summary(outcomes, explainer, out_dir)
    return outcomes


def _explain_batch(explainer, paths, pictures, batch, out_dir, targets, preprocessing, alpha, colormap,
                   aug_smooth):
    result = explainer(batch, targets, aug_smooth=aug_smooth)
    scores = result.outputs[explainer.subject.output]
    outcomes = []
    for index, (path, picture) in enumerate(zip(paths, pictures)):
        stem = os.path.splitext(os.path.basename(path))[0]
        overlay_path = os.path.join(out_dir, f"{stem}_cam.png")
        map_path = os.path.join(out_dir, f"{stem}_cam.npy")
        overlay(display_rgb(picture, preprocessing.size), result.cams[index], alpha, colormap).save(overlay_path)
        np.save(map_path, result.cams[index])
        row = scores[index].reshape(-1) if scores.ndim == 2 else None
        outcomes.append(Outcome(
            image=path,
            predicted_class=int(row.argmax()) if row is not None else None,
            score=float(row.max()) if row is not None else None,
            explained_class=int(result.classes[index]) if result.classes is not None else None,
            overlay=overlay_path, map=map_path))
    return outcomes


def _write_summary(outcomes: list[Outcome], explainer: Explainer, out_dir: str) -> None:
    """summary.json (nested, for programs) and summary.csv (one row per image, for spreadsheets)."""
    layers = list(explainer.subject.keys)
    summary = {"layers": layers, "method": explainer.method,
               "images": [{k: v for k, v in vars(o).items() if v is not None} for o in outcomes]}
    with open(os.path.join(out_dir, "summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    columns = [f.name for f in fields(Outcome)]
    with open(os.path.join(out_dir, "summary.csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns + ["layer", "method"])
        for outcome in outcomes:
            writer.writerow([_cell(getattr(outcome, c)) for c in columns] + ["+".join(layers), explainer.method])


def _cell(value) -> str:
    return "" if value is None else str(value)


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} images")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()
