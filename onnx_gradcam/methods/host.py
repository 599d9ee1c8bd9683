"""The methods computed on the host, as a registry like the gradient methods'.

As in pytorch-grad-cam's ``BaseCAM``, the methods differ in how they weight a layer's channels (or, for
the Eigen methods, in what they project); each is a small function of a :class:`LayerEvidence`, which holds
a layer's activations and gradients (NCHW) and the score functions the perturbation methods call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from . import eigen, perturbation
from .perturbation import ScoreFunction


@dataclass
class LayerEvidence:
    """What a host method may read about one layer of one batch.

    ``activations`` and ``gradients``: (N, C, h, w). ``images``: the image input as fed. ``scores``: the
    target's score per image. ``score_images`` scores masked images (the whole model), ``score_activations``
    ablated layer activations (only the head). ``per_run``: perturbed inputs per session run.
    """

    activations: np.ndarray
    gradients: Optional[np.ndarray]
    images: np.ndarray
    channels_first: bool
    scores: np.ndarray
    score_images: ScoreFunction
    score_activations: ScoreFunction
    per_run: int
    eigen_smooth: bool = False

    def weighted(self, weights: np.ndarray) -> np.ndarray:
        """relu(sum_c w_c A_c), or with ``eigen_smooth`` the first principal component of w_c A_c."""
        if self.eigen_smooth:
            return np.maximum(eigen.project_2d(weights[:, :, None, None] * self.activations), 0)
        return perturbation.weighted_map(weights, self.activations)


@dataclass(frozen=True)
class HostMethod:
    """A host method: whether it reads gradients (so the explainer model computes them), and its raw map."""

    needs_gradients: bool
    raw_map: Callable[[LayerEvidence], np.ndarray]


def _eigencam(evidence: LayerEvidence) -> np.ndarray:
    return eigen.eigencam(evidence.activations)


def _eigengradcam(evidence: LayerEvidence) -> np.ndarray:
    return eigen.eigengradcam(evidence.activations, evidence.gradients)


def _scorecam(evidence: LayerEvidence) -> np.ndarray:
    return evidence.weighted(perturbation.score_cam_weights(
        evidence.activations, evidence.images, evidence.channels_first, evidence.score_images, evidence.per_run))


def _ablationcam(evidence: LayerEvidence) -> np.ndarray:
    return evidence.weighted(perturbation.ablation_cam_weights(
        evidence.activations, evidence.scores, evidence.score_activations, evidence.per_run))


HOST_METHODS: dict[str, HostMethod] = {
    "eigencam": HostMethod(needs_gradients=False, raw_map=_eigencam),
    "eigengradcam": HostMethod(needs_gradients=True, raw_map=_eigengradcam),
    "scorecam": HostMethod(needs_gradients=False, raw_map=_scorecam),
    "ablationcam": HostMethod(needs_gradients=False, raw_map=_ablationcam),
}
