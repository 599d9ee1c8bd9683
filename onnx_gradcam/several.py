"""Several targets for the same image: the network's body runs once, then the head explainer (the cut-out
head, its backward pass and the maps) runs once over the repeated activations, one row per target."""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from .build import ExplainerModel, build_explainer_model
from .explanation import Explanation
from .graph.assemble import with_outputs
from .graph.head import Head, cut_head_at
from .graph.model import normalize
from .graph.view import GraphView
from .sessions import Kind, SessionCache, SessionKey
from .subject import Subject
from .targets import Seeding, target_feed


class SeveralPerImage:
    """The way of computing for a list of class indices per image (gradient methods only)."""

    def __init__(self, subject: Subject, method: str, sessions: SessionCache):
        self.subject = subject
        self.method = method
        self.sessions = sessions
        self._head: Optional[Head] = None
        self._head_explainer: Optional[ExplainerModel] = None

    def explain(self, feeds: Mapping[str, np.ndarray], targets: Sequence[Sequence[int]]) -> Explanation:
        per_image = [list(t) for t in targets]
        batch = len(next(iter(feeds.values())))
        if len(per_image) != batch:
            raise ValueError(f"{len(per_image)} target lists for {batch} images")
        counts = {len(t) for t in per_image}
        if len(counts) != 1:
            raise ValueError("give every image the same number of targets")
        (count,) = counts
        view = self.subject.view
        target = target_feed([c for t in per_image for c in t], batch * count, view.shape(self.subject.output),
                             np.float32)
        if target.seeding is not Seeding.CLASS:  # checked before the body runs
            raise ValueError("several targets per image take class indices")
        head, explainer = self._parts()
        boundary = self.sessions.run(SessionKey(Kind.BODY, tuple(head.inputs)),
                                     lambda: with_outputs(view, head.inputs), head.inputs, feeds)
        repeated = {name: np.repeat(value, count, axis=0) for name, value in boundary.items()}
        names = list(dict.fromkeys([*explainer.raw, explainer.cam, *explainer.layer_cams, explainer.class_output]))
        results = self.sessions.run(SessionKey(Kind.HEAD, ("explainer", *head.inputs)), lambda: explainer.model,
                                    names, {**repeated, explainer.target_input: target.values,
                                            explainer.image_size_input: np.asarray(self.subject.image_size(feeds),
                                                                                   np.int64)})

        def split(values: np.ndarray) -> np.ndarray:
            return values.reshape(batch, count, *values.shape[1:])

        keys = self.subject.keys
        return Explanation(cams=split(results[explainer.cam]),
                           raw={key: split(results[name]) for key, name in zip(keys, explainer.raw)},
                           outputs={}, classes=split(results[explainer.class_output]), layers=list(self.subject.layers),
                           layer_cams={key: split(results[name]) for key, name in zip(keys, explainer.layer_cams)})

    def _parts(self) -> tuple[Head, ExplainerModel]:
        """The cut-out head and its explainer model, built on first use."""
        if self._head is None:
            self._head = cut_head_at(self.subject.view, self.subject.layers, self.subject.output)
            head_subject = self.subject.head(GraphView(normalize(self._head.model)))
            self._head_explainer = build_explainer_model(head_subject, Seeding.CLASS, self.method)
        return self._head, self._head_explainer
