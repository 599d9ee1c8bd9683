"""Faithfulness scores of CAM maps: does the model's confidence follow the map when the pixels it ranks first are
removed, kept or put back?

Every score runs the model (a :data:`~onnx_gradcam.scores.predict.Predict`, class probabilities) on perturbed copies
of the images. They are made and scored ``chunk_size`` at a time, across images and steps: one predict call per
chunk, so a data set costs few session runs and bounded memory.

All take ``images`` (N, C, H, W) or (N, H, W, C) as ``layout`` says (the model's own layout), their maps ``cams``
(N, H, W) at the images' resolution and ``classes`` (N,), the class each map explains; results are per image. A map
holding NaN (an image its explainer could not explain, ``Explanation.nonfinite``) is an error naming its rows rather
than a score: drop those rows and score the others. Pixels tied in a map are taken row by row (raster order), so a
uniform map removes the image top to bottom.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from .predict import Predict

LAYOUTS = ("NCHW", "NHWC")
ORDERS = ("morf", "lerf")
ROAD_PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
"""ROAD's percentages of pixels removed (Rong et al. 2022 report 10% to 90% in steps of 10%)."""

RISE = "Petsiuk et al. 2018, RISE: Randomized Input Sampling for Explanation of Black-box Models"
GRAD_CAM_PP = ("Chattopadhay et al. 2018, Grad-CAM++: Generalized Gradient-based Visual Explanations for Deep "
               "Convolutional Networks")
ROAD = "Rong et al. 2022, A Consistent and Efficient Evaluation Strategy for Attribution Methods (ROAD)"

_NEIGHBOURS = ((-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12), (0, -1, 1 / 6), (0, 1, 1 / 6), (1, -1, 1 / 12),
               (1, 0, 1 / 6), (1, 1, 1 / 12))
"""ROAD's linear imputation weights: (row offset, column offset, weight) of the 8 neighbours."""


@dataclass(frozen=True)
class Curve:
    """The class probability as pixels go: ``scores[i, s]`` for image i once ``fractions[s]`` of its pixels are
    removed (deletion, ROAD) or put back (insertion); ``auc`` (N,) the area under each curve, by the trapezoid rule
    over ``fractions`` (so a ROAD curve over 10% to 90% has at most 0.8)."""

    fractions: np.ndarray
    scores: np.ndarray
    auc: np.ndarray


@dataclass(frozen=True)
class DropIncrease:
    """Grad-CAM++'s two numbers per image: ``drop`` (N,) in [0, 1] and ``increase`` (N,) bool."""

    drop: np.ndarray
    increase: np.ndarray


def deletion(predict: Predict, images: np.ndarray, cams: np.ndarray, classes: np.ndarray, layout: str = "NCHW",
             steps: int = 20, baseline: float = 0.0, chunk_size: int = 256) -> Curve:
    """Deletion (Petsiuk et al. 2018, RISE): the pixels are set to ``baseline`` (all channels) in order of
    decreasing map value, in ``steps`` equal steps from none to all, and the curve is the class probability after
    each. Lower AUC is better: a faithful map names first the pixels whose loss drops the confidence.

    RISE deletes to zero: ``baseline`` is in the model's input units, so 0 is black for [0, 1] images and the data
    set's mean colour for standardised ones. RISE removes 224 pixels a step on 224 x 224 images (224 steps); 20 steps
    of 5% keep the curve's shape at a tenth of the cost. Cost: steps + 1 model runs per image.
    """
    images, cams, classes = _checked(images, cams, classes, layout)
    x = _channels_first(images, layout)
    return _game(predict, x, np.broadcast_to(np.asarray(baseline, x.dtype), x.shape), cams, classes, layout, steps,
                 chunk_size)


def insertion(predict: Predict, images: np.ndarray, cams: np.ndarray, classes: np.ndarray, layout: str = "NCHW",
              steps: int = 20, chunk_size: int = 256) -> Curve:
    """Insertion (Petsiuk et al. 2018, RISE): from a blurred copy of the image its pixels are put back in order of
    decreasing map value, in ``steps`` equal steps from none to all, and the curve is the class probability after
    each. Higher AUC is better: a faithful map names first the pixels that bring the confidence back.

    The blur is RISE's: a Gaussian of sigma 5 cut to 11 x 11 pixels, zero beyond the image's borders. It starts
    from an image without the object's detail rather than from a blank one, which would be out of the model's
    data. Cost: steps + 1 model runs per image.
    """
    images, cams, classes = _checked(images, cams, classes, layout)
    x = _channels_first(images, layout)
    return _game(predict, _blurred(x), x, cams, classes, layout, steps, chunk_size)


def average_drop_increase(predict: Predict, images: np.ndarray, cams: np.ndarray, classes: np.ndarray,
                          layout: str = "NCHW", chunk_size: int = 256) -> DropIncrease:
    """Average drop and increase in confidence (Chattopadhay et al. 2018, Grad-CAM++): the model sees the
    explanation map image, the image times its map (every channel). With Y the class probability on the image and
    O on the explanation map image, ``drop`` is max(0, Y - O) / Y, a fraction (the paper's "average drop %" is 100
    times its mean over a data set): lower is better, the map keeps what the model needs. ``increase`` is O > Y
    (the paper's "increase in confidence" is the percentage of images where it holds): higher is better.

    The maps must lie in [0, 1], as they dim the image. An image whose class has probability 0 is an error (the
    drop divides by it). Cost: 2 model runs per image.
    """
    images, cams, classes = _checked(images, cams, classes, layout)
    outside = np.flatnonzero((cams.min(axis=(1, 2)) < 0) | (cams.max(axis=(1, 2)) > 1))
    if outside.size:
        raise ValueError(f"the cams of image(s) {outside.tolist()} leave [0, 1]: the explanation map image is the "
                         "image times its map, which needs maps in [0, 1] (normalise them first)")
    x = _channels_first(images, layout)
    n = len(x)
    kept = x * cams[:, None].astype(x.dtype)

    def make(jobs: np.ndarray) -> np.ndarray:
        return _to_layout(np.where((jobs < n)[:, None, None, None], x[jobs % n], kept[jobs % n]), layout)

    scores = _class_scores(predict, np.arange(2 * n) % n, make, classes, chunk_size)
    y, o = scores[:n], scores[n:]
    zero = np.flatnonzero(y == 0)
    if zero.size:
        raise ValueError(f"the model gives image(s) {zero.tolist()} probability 0 for class(es) "
                         f"{classes[zero].tolist()}: the average drop divides by it, so it is undefined there")
    return DropIncrease(drop=np.maximum(0.0, y - o) / y, increase=o > y)


def road(predict: Predict, images: np.ndarray, cams: np.ndarray, classes: np.ndarray, layout: str = "NCHW",
         percentages: Sequence[float] = ROAD_PERCENTAGES, order: str = "morf", noise: float = 0.01,
         seed: Optional[int] = 0, chunk_size: int = 256) -> Curve:
    """ROAD, RemOve And Debias (Rong et al. 2022): the top (``order="morf"``, most relevant first) or bottom
    (``"lerf"``, least relevant first) ``p`` percent of the pixels by map value (p% of H x W, rounded down) are removed
    and imputed, and the curve is the class probability at each percentage; ``auc`` the area under it over the
    fractions removed (p / 100). MoRF: lower is better (the confidence falls as the relevant pixels go); LeRF: higher
    is better (it holds while the irrelevant ones go).

    Noisy linear imputation: each removed pixel is the weighted mean of its neighbours inside the image (sides 1/6,
    corners 1/12), removed neighbours being unknowns too, so one sparse linear system per image and percentage; plus
    Gaussian noise of standard deviation ``noise`` in the model's input units (ROAD's 0.01). Unlike a constant
    baseline it leaves no outline of the removed pixels for the model to read. ``seed`` makes the noise reproducible
    (None: fresh noise each call). Cost: one model run and one sparse solve per image and percentage.
    """
    images, cams, classes = _checked(images, cams, classes, layout)
    if order not in ORDERS:
        raise ValueError(f"order={order!r}: 'morf' (most relevant first) or 'lerf' (least relevant first)")
    percentages = np.asarray(percentages, dtype=float)
    within = percentages.ndim == 1 and percentages.size and ((percentages > 0) & (percentages < 100)).all()
    if not within or (np.diff(percentages) <= 0).any():
        raise ValueError(f"percentages {percentages.tolist()}: increasing percentages of pixels removed, each above 0 "
                         "and below 100 (the imputation needs pixels left to impute from)")
    x = _channels_first(images, layout)
    n, size = len(x), cams[0].size
    counts = np.array([int(size * p / 100) for p in percentages])
    ranks = _ranks(cams, descending=order == "morf")
    image_of, step_of = np.divmod(np.arange(n * len(counts)), len(counts))
    rng = np.random.default_rng(seed)

    def make(jobs: np.ndarray) -> np.ndarray:
        removed = ranks[image_of[jobs]] < counts[step_of[jobs], None]
        return _to_layout(np.stack([_impute(x[image_of[job]], mask.reshape(cams.shape[1:]), noise, rng)
                                    for job, mask in zip(jobs, removed)]), layout)

    scores = _class_scores(predict, image_of, make, classes, chunk_size).reshape(n, len(counts))
    return Curve(fractions=percentages / 100, scores=scores, auc=np.trapezoid(scores, percentages / 100, axis=1))


@dataclass(frozen=True)
class Score:
    """A faithfulness score by name: ``function(predict, images, cams, classes, layout)`` gives one float per
    image at the functions' defaults; ``higher_is_better`` says which way is better; ``paper`` where it is from."""

    function: Callable[..., np.ndarray]
    higher_is_better: bool
    paper: str


def _part(function: Callable, field: str, **options) -> Callable[..., np.ndarray]:
    """The per-image ``field`` of ``function``'s result, as a float array."""
    def score(predict: Predict, images: np.ndarray, cams: np.ndarray, classes: np.ndarray, layout: str) -> np.ndarray:
        return getattr(function(predict, images, cams, classes, layout, **options), field).astype(np.float64)
    return score


FAITHFULNESS: dict[str, Score] = {
    "deletion_auc": Score(_part(deletion, "auc"), higher_is_better=False, paper=RISE),
    "insertion_auc": Score(_part(insertion, "auc"), higher_is_better=True, paper=RISE),
    "average_drop": Score(_part(average_drop_increase, "drop"), higher_is_better=False, paper=GRAD_CAM_PP),
    "average_increase": Score(_part(average_drop_increase, "increase"), higher_is_better=True, paper=GRAD_CAM_PP),
    "road_morf": Score(_part(road, "auc", order="morf"), higher_is_better=False, paper=ROAD),
    "road_lerf": Score(_part(road, "auc", order="lerf"), higher_is_better=True, paper=ROAD),
}


def faithfulness_scores(predict: Predict, images: np.ndarray, cams: np.ndarray, classes: np.ndarray,
                        layout: str = "NCHW", names: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """The scores of :data:`FAITHFULNESS` named (all by default), each (N,) per image, at the functions' defaults.
    Inputs are checked once, before any model run. Cost at the defaults, in model runs per image: deletion and
    insertion 21 each, average drop and average increase 2 each (each runs its own), ROAD 9 each (and 9 sparse
    solves): 64 for all six."""
    names = list(FAITHFULNESS) if names is None else list(names)
    unknown = [name for name in names if name not in FAITHFULNESS]
    if unknown:
        raise ValueError(f"unknown faithfulness score(s) {unknown}: the scores are {list(FAITHFULNESS)}")
    images, cams, classes = _checked(images, cams, classes, layout)
    return {name: FAITHFULNESS[name].function(predict, images, cams, classes, layout) for name in names}


def _checked(images, cams, classes, layout: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inputs as arrays, or an error saying what is wrong and what would be right."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: the images' layout is 'NCHW' or 'NHWC' (the model's own)")
    images, cams, classes = np.asarray(images), np.asarray(cams), np.asarray(classes)
    if images.ndim != 4 or not np.issubdtype(images.dtype, np.floating) or not len(images):
        raise ValueError(f"images of shape {images.shape} and type {images.dtype}: the scores take a batch of at least "
                         f"one float image, (N, C, H, W) or (N, H, W, C) as layout says")
    n, (h, w) = len(images), images.shape[2:] if layout == "NCHW" else images.shape[1:3]
    if cams.shape != (n, h, w):
        raise ValueError(f"cams of shape {cams.shape} do not fit {n} image(s) of {h}x{w} ({layout}, shape "
                         f"{images.shape}): the scores take one map per image at its resolution, ({n}, {h}, {w})")
    if classes.shape != (n,) or not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"classes of shape {classes.shape} and type {classes.dtype}: one integer class index per "
                         f"image, ({n},)")
    nonfinite = np.flatnonzero(~np.isfinite(cams).all(axis=(1, 2)))
    if nonfinite.size:
        raise ValueError(f"the cams of image(s) {nonfinite.tolist()} are not finite (NaN: their explainer could not "
                         "explain them, see Explanation.nonfinite); score the other images")
    return images, cams, classes


def _class_scores(predict: Predict, image_of: np.ndarray, make: Callable[[np.ndarray], np.ndarray],
                  classes: np.ndarray, chunk_size: int) -> np.ndarray:
    """The class probability on each perturbed image (a job; job j perturbs image ``image_of[j]``), made
    ``chunk_size`` at a time by ``make(jobs)`` and scored by one predict call per chunk."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: score at least 1 perturbed image per predict call")
    scores = np.empty(len(image_of))
    for start in range(0, len(image_of), chunk_size):
        jobs = np.arange(start, min(start + chunk_size, len(image_of)))
        out = np.asarray(predict(make(jobs)))
        if out.ndim != 2 or len(out) != len(jobs):
            raise ValueError(f"predict gave shape {out.shape} for {len(jobs)} images: a Predict gives (n, classes)")
        wrong = np.flatnonzero((classes < 0) | (classes >= out.shape[1]))
        if wrong.size:
            raise ValueError(f"class index {classes[wrong].tolist()} of image(s) {wrong.tolist()} is out of range: the "
                             f"model has {out.shape[1]} classes (0 to {out.shape[1] - 1})")
        picked = out[np.arange(len(jobs)), classes[image_of[jobs]]]
        if not np.isfinite(picked).all():
            raise ValueError(f"the model's score is not finite on perturbed copies of image(s) "
                             f"{np.unique(image_of[jobs][~np.isfinite(picked)]).tolist()}")
        scores[jobs] = picked
    return scores


def _game(predict: Predict, start: np.ndarray, finish: np.ndarray, cams: np.ndarray, classes: np.ndarray,
          layout: str, steps: int, chunk_size: int) -> Curve:
    """RISE's causal game: at step s the first counts[s] pixels in the map's order show ``finish``, the others
    ``start`` (both channels first); counts go from 0 to every pixel in ``steps`` equal steps (rounded down)."""
    if steps < 1:
        raise ValueError(f"steps={steps}: at least 1 step from no pixel to all")
    n, size = len(cams), cams[0].size
    counts = np.arange(steps + 1) * size // steps
    ranks = _ranks(cams, descending=True)
    image_of, step_of = np.divmod(np.arange(n * (steps + 1)), steps + 1)

    def make(jobs: np.ndarray) -> np.ndarray:
        shown = (ranks[image_of[jobs]] < counts[step_of[jobs], None]).reshape(len(jobs), 1, *cams.shape[1:])
        return _to_layout(np.where(shown, finish[image_of[jobs]], start[image_of[jobs]]), layout)

    scores = _class_scores(predict, image_of, make, classes, chunk_size).reshape(n, steps + 1)
    return Curve(fractions=counts / size, scores=scores, auc=np.trapezoid(scores, counts / size, axis=1))


def _ranks(cams: np.ndarray, descending: bool) -> np.ndarray:
    """Each pixel's place (N, H * W) in its map's order; ties in raster order (a stable sort)."""
    flat = cams.reshape(len(cams), -1)
    order = np.argsort(-flat if descending else flat, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None], axis=1)
    return ranks


def _blurred(x: np.ndarray) -> np.ndarray:
    """RISE's insertion start (channels first): each channel convolved with a Gaussian of sigma 5 cut to 11 x 11
    (as RISE builds it, by blurring a unit impulse), zero padded."""
    impulse = np.zeros((11, 11))
    impulse[5, 5] = 1.0
    from scipy import ndimage  # here, not at the top: the command line imports this module for its names

    kernel = ndimage.gaussian_filter(impulse, 5)
    return ndimage.correlate(x, kernel[None, None], mode="constant").astype(x.dtype)


def _impute(image: np.ndarray, removed: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``image`` (C, H, W) with the ``removed`` (H, W) pixels replaced by ROAD's noisy linear imputation: each the
    weighted mean of its neighbours inside the image, known or imputed, solved for every channel at once."""
    rows, cols = np.nonzero(removed)
    unknowns = len(rows)
    if not unknowns:
        return image.copy()
    (h, w), channels = removed.shape, len(image)
    variable = np.full(removed.shape, -1)
    variable[rows, cols] = np.arange(unknowns)
    diagonal, right = np.zeros(unknowns), np.zeros((unknowns, channels))
    entries, columns, values = [], [], []
    for dy, dx, weight in _NEIGHBOURS:
        r, c = rows + dy, cols + dx
        inside = np.flatnonzero((r >= 0) & (r < h) & (c >= 0) & (c < w))
        neighbour = variable[r[inside], c[inside]]
        diagonal[inside] += weight
        known = neighbour < 0
        right[inside[known]] += weight * image[:, r[inside[known]], c[inside[known]]].T
        entries.append(inside[~known])
        columns.append(neighbour[~known])
        values.append(np.full((~known).sum(), -weight))
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    system = sparse.csc_matrix((np.concatenate([diagonal, *values]),
                                (np.concatenate([np.arange(unknowns), *entries]),
                                 np.concatenate([np.arange(unknowns), *columns]))), shape=(unknowns, unknowns))
    solved = spsolve(system, right).reshape(unknowns, channels)
    imputed = image.astype(np.float64)
    imputed[:, rows, cols] = (solved + noise * rng.standard_normal(solved.shape)).T
    return imputed.astype(image.dtype)


def _channels_first(images: np.ndarray, layout: str) -> np.ndarray:
    return images if layout == "NCHW" else images.transpose(0, 3, 1, 2)


def _to_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """Channels-first ``x`` in the model's layout, contiguous for the session."""
    return np.ascontiguousarray(x if layout == "NCHW" else x.transpose(0, 2, 3, 1))
