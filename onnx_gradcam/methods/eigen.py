"""EigenCAM and EigenGradCAM: the first principal component of a layer's activations, on the host.

An SVD has no ONNX operator, so these run in NumPy on the activations (and gradients) the explainer model
returns, batched: one ``np.linalg.svd`` over the stacked (N, h*w, C) matrices rather than a Python loop per
image. Inputs are NCHW; callers transpose NHWC layers first.

The definitions are pytorch-grad-cam's ``get_2d_projection`` (Muhammad & Yeasin 2020, EigenCAM): per image,
the (h*w, C) matrix of positions by channels, each channel centred on its mean over positions, projected
on the first right singular vector. Like the peer, NaNs count as 0.

Sign. A singular vector's sign is arbitrary, and LAPACK's choice can flip with the batch, the channel
order or the library build; the peer returns whichever sign it got, so its map can come out inverted (and
then all zero after the ReLU). Here each projection is oriented so that its largest-magnitude value is
positive: it is negated when ``|min| > |max|``. That is the correction of Seg-Eigen-CAM (Chung & Ying 2025,
eq. 13), which pytorch-grad-cam ships as ``get_2d_projection_with_sign_correction``, so the oriented maps
equal that function's. (A "sum positive" rule cannot work: the channels are centred, so every projection
sums to zero.)
"""

from __future__ import annotations

import numpy as np


def project_2d(values: np.ndarray) -> np.ndarray:
    """(N, C, h, w) -> (N, h, w): each image's centred positions-by-channels matrix projected on its first
    right singular vector, oriented so the largest-magnitude value is positive. float32, as the peer.

    Computed in float64: the first singular vector is only as accurate as the gap to the second allows, and
    the SVD costs little next to the network run.
    """
    values = np.asarray(values)
    if values.ndim != 4:
        raise ValueError(f"project_2d takes (N, C, h, w) arrays, got shape {values.shape}; transpose NHWC "
                         "layers to NCHW first")
    n, c, h, w = values.shape
    matrices = values.astype(np.float64)
    matrices[np.isnan(matrices)] = 0.0
    matrices = matrices.reshape(n, c, h * w).transpose(0, 2, 1)           # (N, h*w, C)
    matrices = matrices - matrices.mean(axis=1, keepdims=True)            # centre each channel
    _, _, vt = np.linalg.svd(matrices, full_matrices=False)               # vt: (N, min(h*w, C), C)
    projections = np.einsum("npc,nc->np", matrices, vt[:, 0, :])          # (N, h*w)
    flip = np.abs(projections.min(axis=1)) > np.abs(projections.max(axis=1))
    projections[flip] *= -1
    return projections.reshape(n, h, w).astype(np.float32)


def eigencam(activations: np.ndarray) -> np.ndarray:
    """EigenCAM: (N, C, h, w) activations -> (N, h, w) raw maps, ReLU applied. No gradients, no target:
    the map is what the layer varies most along, whatever the class."""
    return np.maximum(project_2d(activations), 0)


def eigengradcam(activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """EigenGradCAM (pytorch-grad-cam's variant): the principal component of gradients * activations, so the
    map depends on the target. (N, C, h, w) each -> (N, h, w) raw maps, ReLU applied."""
    activations, gradients = np.asarray(activations), np.asarray(gradients)
    if activations.shape != gradients.shape:
        raise ValueError(f"activations {activations.shape} and gradients {gradients.shape} must have one shape")
    return np.maximum(project_2d(gradients * activations), 0)
