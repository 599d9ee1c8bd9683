"""The explainer models of one Explainer: built once per seeding, run through its session cache."""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import numpy as np

from .build import ExplainerModel, build_explainer_model
from .sessions import Kind, SessionCache, SessionKey
from .subject import Subject
from .targets import Seeding, TargetFeed

Wanted = Callable[[ExplainerModel], list[str]]
"""Which outputs of an explainer model a caller reads."""


class ExplainerModels:
    """``method``: the gradient method computed in the graph, or None (activations and gradients only, for the
    host). ``contributions_only``: stop at per-channel contributions (``eigen_smooth``)."""

    def __init__(self, subject: Subject, method: Optional[str], contributions_only: bool, sessions: SessionCache):
        self.subject = subject
        self.method = method
        self.contributions_only = contributions_only
        self.sessions = sessions
        self._built: dict[Seeding, ExplainerModel] = {}

    def model(self, seeding: Seeding) -> ExplainerModel:
        if seeding not in self._built:
            self._built[seeding] = build_explainer_model(self.subject, seeding, self.method, self.contributions_only)
        return self._built[seeding]

    def run(self, feeds: Mapping[str, np.ndarray], target: TargetFeed, wanted: Wanted,
            on_device: Optional[Wanted] = None) -> tuple[ExplainerModel, dict[str, np.ndarray]]:
        """One session run over a batch: (the model run, the outputs ``wanted`` names by name; those
        ``on_device`` names left on the session's device)."""
        built = self.model(target.seeding)
        inputs = dict(feeds) if built.target_input is None else {**feeds, built.target_input: target.values}
        key = SessionKey(Kind.EXPLAINER, target.seeding)
        return built, self.sessions.run(key, lambda: built.model, wanted(built), inputs,
                                        on_device(built) if on_device else ())
