"""The scan's report: its results as files a person or a program reads.

:func:`write_report` writes, into one folder,

- ``scores.csv`` and ``scores.json``: the rows in ranking order with a rank (NaN empty in the CSV, null in
  the JSON, which also holds the directions, the scores ranked by, the recommendation and the notes);
- ``scores_by_depth.png``: each score against the layers' depth (:mod:`.plot`);
- ``grid.png``: images by maps (:mod:`.sheet`);
- ``report.html``: all of it on one self-contained page (:mod:`.page`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .page import report_page
from .plot import plot_scores_by_depth
from .sheet import picture_sheet
from .tables import columns, ranked_rows, write_csv, write_json

FILES = {"csv": "scores.csv", "json": "scores.json", "plot": "scores_by_depth.png", "grid": "grid.png",
         "html": "report.html"}


@dataclass
class ScanResult:
    """What a scan found, as :func:`write_report` takes it.

    ``rows``: one per (layer, method): "layer" (the name users type), "tensor", "method", "kind" (the place:
    "cut", "inside a residual branch", "branch before a merge"), "depth", "stride", "images" (how many were
    scored) and, per score name, the mean over the images (a float, NaN possible).
    ``directions``: score name -> whether higher is better, for the scores in the rows. ``rank_by``: the
    scores the ranking used. ``ranking``: indices into ``rows``, best first, each row once.
    ``recommendation``: a sentence or two on the layer and method to use, and why.
    ``grid_images``: a few (H, W, 3) images in [0, 1]; ``grid_labels``: a caption per grid image;
    ``grid_maps``: column header ("layer · method") -> one (H, W) map in [0, 1] per grid image.
    ``notes``: warnings to show (images skipped, and why).
    """

    rows: list[dict]
    directions: dict[str, bool]
    rank_by: list[str]
    ranking: list[int]
    recommendation: str
    grid_images: list[np.ndarray]
    grid_labels: list[str]
    grid_maps: dict[str, list[np.ndarray]]
    title: str = "onnx-gradcam scan"
    notes: list[str] = field(default_factory=list)


def write_report(result: ScanResult, folder: str) -> dict[str, str]:
    """Writes scores.csv, scores.json, scores_by_depth.png, grid.png and report.html into ``folder`` (made
    if missing); returns {kind: path} with the kinds "csv", "json", "plot", "grid", "html"."""
    ranked_rows(result), columns(result)  # a malformed result fails here, before any file is written
    os.makedirs(folder, exist_ok=True)
    paths = {kind: os.path.join(folder, name) for kind, name in FILES.items()}
    write_csv(result, paths["csv"])
    write_json(result, paths["json"])
    plot_scores_by_depth(result, paths["plot"])
    picture_sheet(result.grid_images, result.grid_labels, result.grid_maps).save(paths["grid"])
    with open(paths["plot"], "rb") as plot, open(paths["grid"], "rb") as grid:
        page = report_page(result, plot.read(), grid.read(), [FILES[kind] for kind in FILES if kind != "html"])
    with open(paths["html"], "w", encoding="utf-8") as file:
        file.write(page)
    return paths


__all__ = ["ScanResult", "write_report"]
