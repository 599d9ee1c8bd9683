"""The scan: which layer, and which method, gives the best maps for a model on a data set.

Every layer named (all candidates by default) is explained in one pass per batch and method
(``Explainer(layer=[...])``); each layer's map is scored against ground truth (localisation, when given) and
against the model itself (faithfulness: the model run on images with the map's pixels removed or kept). The
images stream through in batches, so only per-image scores and a few pictures for the grid are kept: a data set
larger than memory is fine. Layers are ranked by the mean position over the scores ranked by.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image

from .explainer import Explainer
from .files import chosen_preprocessing, find_images, show_progress
from .graph.layout import image_hw
from .graph.model import ModelLike
from .graph.places import places as layer_places
from .images import Preprocessing, display_rgb, load_picture
from .report import ScanResult, write_report
from .scores.faithfulness import FAITHFULNESS, faithfulness_scores
from .scores.ground_truth import GroundTruth, GroundTruthError
from .scores.localisation import LOCALISATION, localisation_scores
from .scores.predict import session_predictor

SCAN_FAITHFULNESS = ("deletion_auc", "insertion_auc", "average_drop", "average_increase")
"""The faithfulness scores a scan computes unless told: 46 model runs per image and layer. ROAD (``road_morf``,
``road_lerf``) adds 9 model runs and 9 sparse solves per image, layer and order: about 1.2 s of CPU per image
and order at 224 x 224, so it is asked for by name."""
GRID_IMAGES = 6
GRID_COLUMNS = 12
"""The picture grid shows at most this many (layer, method) columns: the best-ranked and others spread over
the depths, in graph order."""
GRID_CELL = 96
"""Grid maps are kept at this size at most (the grid's cells are smaller), so keeping them costs little."""


@dataclass
class _Batch:
    """Images in the model's layout, their positions among the inputs, what to call each, their masks (None
    without ground truth), and pictures for the grid (RGB in [0, 1])."""

    images: np.ndarray
    indices: list[int]
    names: list[str]
    masks: Optional[np.ndarray]
    pictures: list[np.ndarray]


@dataclass
class _Tally:
    """Per (layer key, method): each score's per-image values, over the batches so far."""

    scores: dict[tuple[str, str], dict[str, list[np.ndarray]]] = field(default_factory=dict)

    def add(self, key: tuple[str, str], values: dict[str, np.ndarray]) -> None:
        for name, per_image in values.items():
            self.scores.setdefault(key, {}).setdefault(name, []).append(np.asarray(per_image, np.float64))

    def means(self, key: tuple[str, str]) -> dict[str, float]:
        """Each score's mean over the images it is defined on (an all-zero map has no energy share: NaN)."""
        means = {}
        for name, parts in self.scores.get(key, {}).items():
            values = np.concatenate(parts)
            defined = values[~np.isnan(values)]
            means[name] = float(defined.mean()) if defined.size else float("nan")
        return means


def scan(model: ModelLike, images, ground_truth=None, layers: Union[str, Sequence[str]] = "all",
         methods: Sequence[str] = ("gradcam",), targets=None, output=None, faithfulness: Optional[Sequence[str]] = None,
         rank_by: Optional[Sequence[str]] = None, batch_size: int = 16,
         preprocessing: Union[Preprocessing, dict, None] = None,
         grid_images: int = GRID_IMAGES, out: Optional[str] = None, progress: bool = True,
         providers="auto") -> ScanResult:
    """Score the maps of every layer (and method) over a data set, rank them and recommend one.

    Args:
        model: the ONNX model (a path, bytes or ``onnx.ModelProto``).
        images: an array (N, ...) in the model's own input layout, or image files and folders (read and
            preprocessed as the ``explain`` command does).
        ground_truth: None (faithfulness alone ranks), a :class:`~onnx_gradcam.scores.ground_truth.GroundTruth`,
            a boxes file (CSV ``image,x0,y0,x1,y1`` or JSON) or a folder of masks (for image files), or masks
            (N, H, W) / boxes (N, 4) / a list of boxes per image (for an array). Boxes are in pixels of the
            image as given. An image without ground truth, or with ground truth that does not fit it, is
            skipped with a warning, and the report's notes say so.
        layers: ``"all"`` (every candidate layer) or a list of layer names.
        methods: gradient CAM methods to compare.
        targets: the class to explain per image (an int for all, or one per image); None: the top class.
        faithfulness: faithfulness scores to compute (names in ``FAITHFULNESS``); None: ``SCAN_FAITHFULNESS``
            (all but ROAD, which costs far more); () none.
        rank_by: the scores the ranking uses; by default the localisation scores with ground truth, else the
            faithfulness scores.
        preprocessing: for image files, a :class:`~onnx_gradcam.images.Preprocessing`, or overrides of the
            model's own (``{"size": (H, W), "mean": ..., "std": ..., "channel_order": "BGR"}``).
        out: a folder to write the report into (``scores.csv``, ``scores.json``, the plot, the grid,
            ``report.html``).
    """
    faithfulness = list(SCAN_FAITHFULNESS if faithfulness is None else faithfulness)
    unknown = [name for name in faithfulness if name not in FAITHFULNESS]
    if unknown:
        raise ValueError(f"unknown faithfulness scores {unknown}; known: {', '.join(FAITHFULNESS)}")
    directions, rank_by = _scores_and_ranking(faithfulness, rank_by, ground_truth is not None)
    explainers = {method: Explainer(model, layer=layers, method=method, output=output, providers=providers)
                  for method in methods}
    first = next(iter(explainers.values()))
    keys, subject = list(first.subject.keys), first.subject
    batches = _batches(images, ground_truth, first, batch_size, preprocessing)
    predict = session_predictor(model, output=subject.output, batch_size=max(64, batch_size))
    tally, grid, notes, scored = _Tally(), _Grid(grid_images), [], 0
    for batch, skipped, done, total in batches:
        notes.extend(skipped)
        for note in skipped:
            warnings.warn(note, stacklevel=2)
        if batch is not None:
            scored += len(batch.images)
            for method, explainer in explainers.items():
                result = explainer(batch.images, _batch_targets(targets, batch))
                for key in keys:
                    cams = result.layer_cams[key]
                    values = faithfulness_scores(predict, batch.images, cams, result.classes, subject.image_layout,
                                                 names=faithfulness) if faithfulness else {}
                    if batch.masks is not None:
                        values.update(localisation_scores(cams, batch.masks))
                    tally.add((key, method), values)
                    grid.add_maps((key, method), cams)
                if method == methods[0]:
                    grid.add_pictures(batch, result.classes)
        if progress:
            show_progress(done, total, unit="images scanned")
    if scored == 0:
        raise ValueError("no image was scored: " + ("; ".join(notes) if notes else "no images given"))
    result = _result(first, keys, methods, tally, grid, notes, directions, rank_by, scored,
                     f"onnx-gradcam scan of {_model_name(model)}")
    if out is not None:
        write_report(result, out)
    return result


def _batch_targets(targets, batch: _Batch):
    """The targets of this batch's images: one for all, or those of its images out of one per input."""
    if targets is None or np.ndim(targets) == 0:
        return targets
    return np.asarray(targets)[batch.indices]


@dataclass
class _Grid:
    """The first ``count`` images scored, their captions and each (layer, method)'s maps of them (small)."""

    count: int
    pictures: list[np.ndarray] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    maps: dict[tuple[str, str], list[np.ndarray]] = field(default_factory=dict)

    def add_maps(self, key: tuple[str, str], cams: np.ndarray) -> None:
        kept = self.maps.setdefault(key, [])
        kept.extend(_small(cam) for cam in cams[:max(0, self.count - len(kept))])

    def add_pictures(self, batch: _Batch, classes: np.ndarray) -> None:
        room = max(0, self.count - len(self.pictures))
        self.pictures.extend(batch.pictures[:room])
        self.labels.extend(f"{name} · class {int(c)}" for name, c in zip(batch.names[:room], classes[:room]))


def _small(cam: np.ndarray) -> np.ndarray:
    """A map at most GRID_CELL pixels on its longer side (bilinear), for the grid."""
    height, width = cam.shape
    scale = GRID_CELL / max(height, width)
    if scale >= 1:
        return cam.astype(np.float32)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize(size, Image.BILINEAR))


# --- where images and their ground truth come from ----------------------------------------------------------
def _batches(images, ground_truth, explainer: Explainer, batch_size: int,
             preprocessing: Union[Preprocessing, dict, None]) -> Iterator[tuple[Optional[_Batch], list[str], int, int]]:
    """(a batch or None, notes on images skipped, images done so far, images in all), batch by batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: scan at least 1 image per run")
    if isinstance(images, np.ndarray):
        return _array_batches(images, _array_truth(ground_truth, len(images)), explainer, batch_size)
    paths = find_images([images] if isinstance(images, (str, os.PathLike)) else list(images))
    return _file_batches(paths, _file_truth(ground_truth), explainer, batch_size,
                         chosen_preprocessing(explainer, preprocessing))


def _array_truth(ground_truth, count: int) -> Optional[GroundTruth]:
    if ground_truth is None or isinstance(ground_truth, GroundTruth):
        return ground_truth
    truth = GroundTruth.from_arrays(ground_truth)
    if len(truth) != count:
        raise GroundTruthError(f"ground truth for {len(truth)} images, but {count} images were given: give one "
                               "mask or box list per image")
    return truth


def _file_truth(ground_truth) -> Optional[GroundTruth]:
    if ground_truth is None or isinstance(ground_truth, GroundTruth):
        return ground_truth
    if isinstance(ground_truth, (str, os.PathLike)):
        if os.path.isdir(ground_truth):
            return GroundTruth.from_masks_folder(ground_truth)
        return GroundTruth.from_boxes_file(ground_truth)
    raise TypeError("for image files, ground truth is a boxes file (CSV or JSON), a folder of masks or a "
                    f"GroundTruth, not {type(ground_truth).__name__}")


def _array_batches(images: np.ndarray, truth: Optional[GroundTruth], explainer: Explainer, batch_size: int):
    layout = explainer.subject.image_layout
    size = tuple(image_hw(images.shape, layout))
    for start in range(0, len(images), batch_size):
        rows = range(start, min(start + batch_size, len(images)))
        kept, masks, notes = [], [], []
        for index in rows:
            try:
                mask = None if truth is None else truth.mask_for_index(index, size)
            except GroundTruthError as error:
                notes.append(f"image {index} skipped: {error}")
                continue
            kept.append(index)
            masks.append(mask)
        batch = None
        if kept:
            chosen = images[kept]
            batch = _Batch(chosen, kept, [f"image {i}" for i in kept], None if truth is None else np.stack(masks),
                           [_display(row, layout) for row in chosen])
        yield batch, notes, rows.stop, len(images)


def _file_batches(paths: Sequence[str], truth: Optional[GroundTruth], explainer: Explainer, batch_size: int,
                  preprocessing: Preprocessing):
    """Files read and preprocessed batch by batch; masks checked at the picture's own size, then resized
    (nearest) to the size the model sees, as the picture is."""
    names = _names(paths)
    pending: list[tuple[np.ndarray, int, str, Optional[np.ndarray], np.ndarray]] = []
    notes: list[str] = []
    for done, (path, name) in enumerate(zip(paths, names), start=1):
        try:
            picture = load_picture(path)
            row = preprocessing(picture)
            size = tuple(image_hw((1, *row.shape), explainer.subject.image_layout))
            mask = None
            if truth is not None:
                mask = truth.mask_for(name, (picture.height, picture.width))
                if mask is None:
                    raise GroundTruthError(f"no ground truth for {name!r} (ground truth has e.g. "
                                           f"{', '.join(repr(k) for k in truth.keys()[:3])})")
                mask = _resized_mask(mask, size)
        except ValueError as error:  # a GroundTruthError among them
            notes.append(f"{name} skipped: {error}")
        else:
            if pending and pending[0][0].shape != row.shape:
                yield _file_batch(pending, truth), notes, done - 1, len(paths)
                pending, notes = [], []
            pending.append((row, done - 1, name, mask, display_rgb(picture, size)))
        if len(pending) == batch_size or done == len(paths):
            yield (_file_batch(pending, truth) if pending else None), notes, done, len(paths)
            pending, notes = [], []


def _file_batch(pending, truth) -> _Batch:
    rows, indices, names, masks, pictures = (list(column) for column in zip(*pending))
    return _Batch(np.stack(rows), indices, names, None if truth is None else np.stack(masks), pictures)


def _names(paths: Sequence[str]) -> list[str]:
    """Each image's name: its path below the folder common to all (the key ground truth is looked up by)."""
    if len(paths) == 1:
        return [os.path.basename(paths[0])]
    common = os.path.commonpath([os.path.abspath(p) for p in paths])
    return [os.path.relpath(os.path.abspath(p), common) for p in paths]


def _resized_mask(mask: np.ndarray, size: Sequence[int]) -> np.ndarray:
    if tuple(mask.shape) == tuple(size):
        return mask
    picture = Image.fromarray(mask.astype(np.uint8) * 255).resize((int(size[1]), int(size[0])), Image.NEAREST)
    resized = np.asarray(picture) > 0
    if not resized.any():
        raise GroundTruthError(f"its object ({int(mask.sum())} pixels) vanishes when the mask is resized to the "
                               f"model's {size[0]}x{size[1]}")
    return resized


def _display(row: np.ndarray, layout: str) -> np.ndarray:
    """An input row as an RGB picture in [0, 1] for the grid (min-max: arrays may be normalised)."""
    picture = row.transpose(1, 2, 0) if layout == "NCHW" else row
    picture = picture[..., :3] if picture.shape[-1] >= 3 else np.repeat(picture[..., :1], 3, axis=-1)
    low, high = float(picture.min()), float(picture.max())
    return ((picture - low) / (high - low) if high > low else np.zeros_like(picture)).astype(np.float32)


# --- ranking and the result ---------------------------------------------------------------------------------
def _scores_and_ranking(faithfulness: Sequence[str], rank_by: Optional[Sequence[str]], with_truth: bool
                        ) -> tuple[dict[str, bool], list[str]]:
    """(each score the scan computes -> higher is better, the scores it ranks by), checked before any image is
    read: a scan with nothing to score or rank by is refused at once."""
    directions = {name: FAITHFULNESS[name].higher_is_better for name in faithfulness}
    if with_truth:
        directions = {**{name: score.higher_is_better for name, score in LOCALISATION.items()}, **directions}
    if not directions:
        raise ValueError("nothing to score: give ground truth (boxes or masks) or faithfulness scores "
                         f"({', '.join(FAITHFULNESS)})")
    rank_by = list(rank_by) if rank_by else [n for n in directions if (n in LOCALISATION) == with_truth]
    missing = [name for name in rank_by if name not in directions]
    if missing or not rank_by:
        raise ValueError(f"rank_by {missing or rank_by}: rank by scores the scan computes: {', '.join(directions)}")
    return directions, rank_by


def _result(explainer: Explainer, keys, methods, tally: _Tally, grid: _Grid, notes, directions: dict[str, bool],
            rank_by: list[str], scored: int, title: str) -> ScanResult:
    places = layer_places(explainer.subject.view, explainer.subject.output, explainer.layers)
    rows = []
    for key, layer in zip(keys, explainer.layers):
        place = places.get(layer.tensor)
        for method in methods:
            means = tally.means((key, method))
            rows.append({"layer": key, "tensor": layer.tensor, "method": method,
                         "kind": place.kind if place else None, "depth": place.depth if place else None,
                         "stride": place.stride if place else None, "images": scored,
                         **{name: means.get(name, float("nan")) for name in directions}})
    ranking = rank_rows(rows, directions, rank_by)
    columns = _grid_columns(rows, ranking)
    return ScanResult(rows=rows, directions=directions, rank_by=rank_by, ranking=ranking,
                      recommendation=_recommendation(rows, ranking, rank_by, places, explainer),
                      grid_images=grid.pictures, grid_labels=grid.labels,
                      grid_maps={f"{rows[i]['layer']} · {rows[i]['method']}": grid.maps[(rows[i]["layer"],
                                                                                           rows[i]["method"])]
                                 for i in columns},
                      title=title, notes=notes)


def rank_rows(rows: Sequence[dict], directions: dict[str, bool], rank_by: Sequence[str]) -> list[int]:
    """Indices of ``rows``, best first: by each row's mean position over the ``rank_by`` scores (each sorted
    best first in its direction, ties sharing their mean position, NaN last); equal means keep graph order."""
    count = len(rows)
    positions = np.zeros(count)
    for name in rank_by:
        values = np.array([row[name] for row in rows], np.float64)
        keyed = np.where(np.isnan(values), np.inf, -values if directions[name] else values)
        order = np.argsort(keyed, kind="stable")
        ranks = np.empty(count)
        ranks[order] = np.arange(count)
        for value in np.unique(keyed):  # ties share their mean position
            tied = keyed == value
            ranks[tied] = ranks[tied].mean()
        positions += ranks
    return [int(i) for i in np.argsort(positions / len(rank_by), kind="stable")]


def _grid_columns(rows: Sequence[dict], ranking: Sequence[int]) -> list[int]:
    """The rows shown in the grid, in graph order: all, or the best-ranked half of GRID_COLUMNS and the others
    spread evenly over the rest."""
    if len(rows) <= GRID_COLUMNS:
        return list(range(len(rows)))
    best = set(ranking[:GRID_COLUMNS // 2])
    others = [i for i in range(len(rows)) if i not in best]
    spread = np.linspace(0, len(others) - 1, GRID_COLUMNS - len(best)).round().astype(int)
    return sorted(best | {others[i] for i in spread})


def _recommendation(rows, ranking, rank_by, places, explainer: Explainer) -> str:
    top = rows[ranking[0]]
    scores = ", ".join(f"{name} {top[name]:.3g}" for name in rank_by)
    text = (f"Use layer {top['layer']!r} with {top['method']}: it ranks first of {len(rows)} by {', '.join(rank_by)} "
            f"({scores}) over {top['images']} images; it is {_place_words(top)}.")
    place = places.get(top["tensor"])
    if place is not None and place.use_instead:
        block = next((i for i in ranking if rows[i]["layer"] == place.use_instead), None)
        if block is not None:
            text += (f" Its block output {place.use_instead!r}, where every path meets, ranks "
                     f"{ranking.index(block) + 1}.")
    return text


def _place_words(row: dict) -> str:
    parts = [row["kind"] or "a layer of unknown place"]
    if row["depth"] is not None:
        parts.append(f"depth {row['depth']}")
    if row["stride"] is not None:
        parts.append(f"stride {row['stride']:g}")
    return ", ".join(parts)


def _model_name(model) -> str:
    return os.path.basename(str(model)) if isinstance(model, (str, os.PathLike)) else "a model"
