"""Several targets for the same image: the network's body runs once, then the head explainer (the cut-out
head, its backward pass and the maps) runs once over the repeated activations, one row per target.

:class:`SeveralTargets` is a part of :class:`~onnx_gradcam.explainer.Explainer`.
"""

from __future__ import annotations

import numpy as np
import onnx

from .build import CAM_OUTPUT, IMAGE_SIZE_INPUT, ExplainerModel, build_explainer_model
from .explanation import Explanation, Images, Targets
from .graph.assemble import with_outputs
from .graph.head import cut_head
from .graph.model import normalize
from .graph.view import GraphView


def several_per_image(targets) -> bool:
    return isinstance(targets, (list, tuple)) and len(targets) > 0 and all(
        isinstance(t, (list, tuple, np.ndarray)) for t in targets)


class SeveralTargets:
    def _explain_several(self, images: Images, targets) -> Explanation:
        per_image = [list(t) for t in targets]
        feeds = self._feeds(images)
        if len(per_image) != len(next(iter(feeds.values()))):
            raise ValueError(f"{len(per_image)} target lists for {len(next(iter(feeds.values())))} images")
        counts = {len(t) for t in per_image}
        if len(counts) != 1:
            raise ValueError("give every image the same number of targets")
        (count,) = counts
        kind, classes = self._target_feed([c for t in per_image for c in t], len(per_image) * count)
        if kind != "class":  # checked before the body runs
            raise ValueError("several targets per image take class indices")
        head, body, head_explainer = self._head_parts()
        values = dict(zip(head.inputs, self._body_session(body).run(head.inputs, feeds)))
        self.runs["body"] += 1
        repeated = {name: np.repeat(value, count, axis=0) for name, value in values.items()}
        names = head_explainer.raw_outputs + [CAM_OUTPUT, head_explainer.class_output]
        results = dict(zip(names, self._head_session(head_explainer).run(names, {
            **repeated, head_explainer.target_input: classes,
            IMAGE_SIZE_INPUT: np.asarray(self._image_size(feeds), np.int64)})))
        self.runs["head"] += 1
        split = lambda a: a.reshape(len(per_image), count, *a.shape[1:])  # noqa: E731
        return Explanation(cams=split(results[CAM_OUTPUT]),
                           raw={key: split(results[name]) for key, name in zip(self.layer_keys,
                                                                               head_explainer.raw_outputs)},
                           outputs={}, classes=split(results[head_explainer.class_output]), layers=list(self.layers))

    def _head_parts(self):
        if "head" not in self._built:
            head = cut_head(self.view, [layer.tensor for layer in self.layers], self.output)
            self._head = head
            head_view = GraphView(normalize(head.model))
            self._built["head"] = build_explainer_model(head_view, self.layers, self.output, self.method, "class",
                                                        image=None)
            self._body_model = with_outputs(self.view, head.inputs)
        return self._head, self._body_model, self._built["head"]

    def _body_session(self, body: onnx.ModelProto):
        if "body" not in self._sessions:
            self._sessions["body"] = self._make_session(body)
        return self._sessions["body"]

    def _head_session(self, head_explainer: ExplainerModel):
        if "head" not in self._sessions:
            self._sessions["head"] = self._make_session(head_explainer.model)
        return self._sessions["head"]
