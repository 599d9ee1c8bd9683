"""Score-CAM and Ablation-CAM: channel weights from how the target's score responds to perturbations.

Both run on the host around ONNX Runtime sessions the caller provides as score functions: Score-CAM runs
the whole model on the image masked by each channel's upsampled activation (Wang et al. 2020); Ablation-CAM
re-runs only the head with one channel ablated at a time (Desai & Ramaswamy 2020). Inputs are NCHW.
The details follow pytorch-grad-cam 1.5.7 so maps compare one to one: Score-CAM's masks are upsampled with
align_corners=True and min-max normalised with a 1e-8 guard, its weights are a softmax over channels;
Ablation-CAM sets a channel to 0 where the layer's minimum is 0 (post-ReLU) and to min - 1e7 otherwise
(bounded in float16, see :func:`ablation_value`), and
weights channels by the relative drop of the score.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

ScoreFunction = Callable[[np.ndarray, int], np.ndarray]
"""(a batch of perturbed inputs for one image, that image's index) -> the target's score per row."""

ABLATION_OFFSET = 1e7


def align_corners_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) bilinear interpolation with align_corners=True (torch's UpsamplingBilinear2d)."""
    if size_out == 1:  # torch takes the first input sample
        return np.eye(1, size_in)
    if size_in == 1:
        return np.ones((size_out, 1))
    position = np.arange(size_out) * (size_in - 1) / (size_out - 1)
    low = np.minimum(np.floor(position).astype(int), size_in - 2)
    frac = position - low
    matrix = np.zeros((size_out, size_in))
    matrix[np.arange(size_out), low] = 1 - frac
    matrix[np.arange(size_out), low + 1] += frac
    return matrix


def score_cam_masks(activations: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, C, h, w) -> (N, C, H, W) masks in [0, 1]: upsampled (align corners), min-max per channel."""
    rows = align_corners_matrix(activations.shape[2], size[0])
    cols = align_corners_matrix(activations.shape[3], size[1])
    upsampled = np.einsum("Hh,nchw,Ww->ncHW", rows, activations.astype(np.float64), cols)
    low = upsampled.min(axis=(2, 3), keepdims=True)
    high = upsampled.max(axis=(2, 3), keepdims=True)
    return ((upsampled - low) / (high - low + 1e-8)).astype(np.float32)


def score_cam_weights(activations: np.ndarray, images: np.ndarray, channels_first: bool, score: ScoreFunction,
                      batch_size: int) -> np.ndarray:
    """(N, C) weights: softmax over channels of the score of the image masked by each channel's map."""
    size = images.shape[2:4] if channels_first else images.shape[1:3]
    masks = score_cam_masks(activations, size)
    weights = []
    for index, image in enumerate(images):
        per_channel = masks[index][:, None] if channels_first else masks[index][..., None]
        scores = np.concatenate([score(image[None] * per_channel[start:start + batch_size], index)
                                 for start in range(0, len(per_channel), batch_size)])
        weights.append(_softmax(scores.astype(np.float64)))
    return np.reshape(weights, activations.shape[:2])  # (0, C) for an empty batch


def ablation_value(lowest: float, dtype: np.dtype) -> float:
    """The value an ablated channel takes at a layer whose minimum is ``lowest`` (not 0): ``lowest - 1e7``,
    but no lower than 1/256 of the type's range, so that the head's sums stay finite in float16 (where
    ``lowest - 1e7`` is -inf and the scores NaN)."""
    return max(float(lowest) - ABLATION_OFFSET, float(np.finfo(dtype).min) * 2.0**-8)


def ablation_cam_weights(activations: np.ndarray, original: np.ndarray, score: ScoreFunction,
                         batch_size: int) -> np.ndarray:
    """(N, C) weights: (score - score with channel c ablated) / score, per image and channel."""
    channels = activations.shape[1]
    weights = []
    for index, image_activations in enumerate(activations):
        lowest = image_activations.min()
        value = 0.0 if lowest == 0 else ablation_value(lowest, image_activations.dtype)
        scores = []
        for start in range(0, channels, batch_size):
            picked = np.arange(start, min(start + batch_size, channels))
            ablated = np.repeat(image_activations[None], len(picked), axis=0)
            ablated[np.arange(len(picked)), picked] = value
            scores.append(score(ablated, index))
        scores = np.concatenate(scores).astype(np.float64)
        weights.append((original[index] - scores) / original[index])
    return np.reshape(weights, activations.shape[:2])  # (0, C) for an empty batch


def weighted_map(weights: np.ndarray, activations: np.ndarray) -> np.ndarray:
    """relu(sum_c w_c A_c): (N, C) weights, (N, C, h, w) activations -> (N, h, w)."""
    return np.maximum(np.einsum("nc,nchw->nhw", weights, activations.astype(np.float64)), 0).astype(np.float32)


def _softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()
