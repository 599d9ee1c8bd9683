"""Localisation scores: how well each map picks out its object, given the object's pixels.

Every score takes ``cams`` (N, H, W) float in [0, 1] (the maps as the explainer gives them, at the image's
resolution) and ``masks`` (N, H, W) bool (the object's pixels, as :mod:`.ground_truth` makes them) and
returns one float per image, shape (N,). All of them are better when higher. The arguments are checked at
the entry, so a map and a mask that do not belong together raise :class:`LocalisationInputError` instead
of giving a score of the wrong thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

DEFAULT_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))
"""The grid :func:`best_iou` searches: 0.05, 0.10, ..., 0.95. It leaves out 0 (every pixel, the same IoU
for every map) and 1 (only the exact maxima of a normalised map)."""


class LocalisationInputError(ValueError):
    """Maps and masks that cannot be scored together (shape, type, range, or a mask with no object)."""


def _checked(cams, masks) -> tuple[np.ndarray, np.ndarray]:
    """The maps as float64 (sums over a whole image in float32 lose digits) and the masks as bool."""
    cams, masks = np.asarray(cams), np.asarray(masks)
    if cams.ndim != 3 or not np.issubdtype(cams.dtype, np.floating):
        raise LocalisationInputError(f"cams must be a float array (N, H, W), got {cams.dtype} of shape {cams.shape}")
    if masks.shape != cams.shape:
        raise LocalisationInputError(f"masks must have the shape of cams {cams.shape} (N, H, W), got {masks.shape}")
    if masks.dtype != bool:
        if not np.isin(masks, (0, 1)).all():
            raise LocalisationInputError(f"masks must be bool or 0/1, got {masks.dtype} with other values "
                                         "(make them with ground_truth.check_mask, which thresholds at > 0)")
        masks = masks.astype(bool)
    in_range = np.isfinite(cams) & (cams >= 0) & (cams <= 1)
    bad = np.flatnonzero(~in_range.all(axis=(1, 2)))
    if bad.size:
        raise LocalisationInputError(f"cams must be finite and in [0, 1] (as the explainer normalises them); "
                                     f"images {bad.tolist()} are not")
    empty = np.flatnonzero(~masks.any(axis=(1, 2)))
    if empty.size:
        raise LocalisationInputError(f"masks of images {empty.tolist()} have no object pixel: nothing to localise")
    return cams.astype(np.float64), masks


def pointing_game(cams, masks) -> np.ndarray:
    """1.0 where the map's maximum falls on the object, else 0.0 (Zhang et al. 2018, "Top-down neural
    attention by excitation backprop", IJCV). Higher is better.

    Ties: where several pixels share the maximum, the image scores 1.0 if any of them is on the object, as
    Quantus's ``PointingGame`` does. So a constant map scores 1.0: pointing alone cannot tell it from a good
    one, which is why it is read alongside the energy and AUC scores. Like Quantus, and unlike the paper's
    15-pixel tolerance, the maximum must fall on an object pixel itself.
    """
    cams, masks = _checked(cams, masks)
    at_max = cams == cams.max(axis=(1, 2), keepdims=True)
    return (at_max & masks).any(axis=(1, 2)).astype(np.float64)


def energy_pointing_game(cams, masks) -> np.ndarray:
    """The share of the map's mass on the object, sum(cam * mask) / sum(cam) (Wang et al. 2020, "Score-CAM:
    Score-weighted visual explanations for convolutional neural networks", CVPRW). Higher is better.

    An all-zero map has no mass to share: its score is NaN, not 0 or 1, because the image is unscorable and
    the caller must see that (``np.nanmean`` to average the rest, ``np.isnan`` to count them) rather than
    have a made-up value pull the mean.
    """
    cams, masks = _checked(cams, masks)
    total = cams.sum(axis=(1, 2))
    inside = (cams * masks).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / total, np.nan)


def iou(cams, masks, threshold: float = 0.5) -> np.ndarray:
    """Intersection over union of the thresholded map (cam >= ``threshold``) and the object, as CAM's
    localisation thresholds the map (Zhou et al. 2016, "Learning deep features for discriminative
    localization", CVPR; they box the region, here it is compared pixel by pixel). Higher is better."""
    if not 0 <= threshold <= 1:
        raise LocalisationInputError(f"threshold must be in [0, 1] (the maps' range), got {threshold}")
    cams, masks = _checked(cams, masks)
    return _iou(cams >= threshold, masks)


def best_iou(cams, masks, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> np.ndarray:
    """Per image, the best :func:`iou` over ``thresholds`` (default :data:`DEFAULT_THRESHOLDS`, 0.05 to 0.95
    in steps of 0.05). A fixed threshold favours maps whose values happen to suit it; searching it, as Choe et
    al. 2020 argue ("Evaluating weakly supervised object localization methods right", CVPR), scores the shape
    of the map instead. Higher is better."""
    grid = np.asarray(thresholds, np.float64)
    if grid.ndim != 1 or grid.size == 0 or not ((grid >= 0) & (grid <= 1)).all():
        raise LocalisationInputError(f"thresholds must be a non-empty sequence of values in [0, 1], got {thresholds}")
    cams, masks = _checked(cams, masks)
    return np.max([_iou(cams >= t, masks) for t in grid], axis=0)


def _iou(regions: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """IoU per image; the union is never empty, as every mask has an object pixel."""
    return (regions & masks).sum(axis=(1, 2)) / (regions | masks).sum(axis=(1, 2))


def pixel_auc(cams, masks) -> np.ndarray:
    """The area under the ROC curve of the map as a classifier of each pixel as object or not (Fawcett 2006,
    "An introduction to ROC analysis", Pattern Recognition Letters). Higher is better: 1 when every object
    pixel outscores every other, 0.5 for a map that says nothing, 0 when it is inverted.

    Computed as the Mann-Whitney statistic: the chance that a random object pixel scores above a random
    background pixel, ties counted half, from the average ranks of the values; it equals the trapezoidal
    area under the ROC curve. A mask that covers the whole image has no background to rank against and raises.
    """
    cams, masks = _checked(cams, masks)
    full = np.flatnonzero(masks.all(axis=(1, 2)))
    if full.size:
        raise LocalisationInputError(f"masks of images {full.tolist()} cover the whole image: "
                                     "an AUC needs background pixels too")
    scores = np.empty(len(cams))
    for i, (cam, mask) in enumerate(zip(cams.reshape(len(cams), -1), masks.reshape(len(masks), -1))):
        positives = mask.sum()
        negatives = mask.size - positives
        rank_sum = _average_ranks(cam)[mask].sum()
        scores[i] = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    return scores


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values``, equal values sharing the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(values.size)
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    return ranks


@dataclass(frozen=True)
class Score:
    """A score with what a reader of its numbers needs: which way is better and where it comes from."""

    function: Callable[[np.ndarray, np.ndarray], np.ndarray]
    higher_is_better: bool
    paper: str


LOCALISATION: dict[str, Score] = {
    "pointing_game": Score(pointing_game, True, "Zhang et al. 2018, Top-down neural attention by excitation backprop"),
    "energy_pointing_game": Score(energy_pointing_game, True, "Wang et al. 2020, Score-CAM"),
    "iou": Score(iou, True, "Zhou et al. 2016, Learning deep features for discriminative localization"),
    "best_iou": Score(best_iou, True, "Choe et al. 2020, Evaluating weakly supervised object localization "
                                      "methods right"),
    "pixel_auc": Score(pixel_auc, True, "Fawcett 2006, An introduction to ROC analysis"),
}


def localisation_scores(cams, masks) -> dict[str, np.ndarray]:
    """Every score of :data:`LOCALISATION`, each (N,), with its defaults (IoU at 0.5, the default grid)."""
    return {name: score.function(cams, masks) for name, score in LOCALISATION.items()}
