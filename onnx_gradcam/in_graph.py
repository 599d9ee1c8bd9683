"""Gradient methods computed inside the explainer model: outputs, the backward pass and the maps in one
session run per batch, so only maps leave the device."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .explainer_models import ExplainerModels
from .explanation import Explanation, LayerGradients
from .targets import TargetFeed


class InGraph:
    """The way of computing for gradient methods (and for :meth:`gradients`, whatever the method)."""

    def __init__(self, models: ExplainerModels, maps_on_device: bool = False):
        self.models = models
        self.maps_on_device = maps_on_device

    def explain(self, feeds: Mapping[str, np.ndarray], target: TargetFeed) -> Explanation:
        """``maps_on_device``: ``cams`` and ``layer_cams`` stay where the session computed them, as
        ``onnxruntime.OrtValue`` (the rest is copied to the host)."""
        built, values = self.models.run(feeds, target, lambda b: list(dict.fromkeys(
            [*b.model_outputs, *b.raw, b.cam, *b.layer_cams] + ([b.class_output] if b.class_output else []))),
            on_device=lambda b: [b.cam, *b.layer_cams] if self.maps_on_device else [])
        keys = self.models.subject.keys
        return Explanation(cams=values[built.cam], raw=dict(zip(keys, (values[r] for r in built.raw))),
                           outputs={name: values[name] for name in built.model_outputs},
                           classes=values.get(built.class_output), layers=list(self.models.subject.layers),
                           layer_cams=dict(zip(keys, (values[name] for name in built.layer_cams))))

    def gradients(self, feeds: Mapping[str, np.ndarray], target: TargetFeed) -> dict[str, LayerGradients]:
        """Per layer (keyed as given): its activations and d(target)/d(activations)."""
        built, values = self.models.run(feeds, target, lambda b: [*b.activations, *b.gradients])
        return {key: LayerGradients(values[activation], values[gradient])
                for key, activation, gradient in zip(self.models.subject.keys, built.activations, built.gradients)}
