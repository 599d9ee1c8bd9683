"""Methods computed on the host around ONNX Runtime sessions: EigenCAM, EigenGradCAM (an SVD), Score-CAM
(the model on masked inputs), Ablation-CAM (the cut-out head on ablated activations), and eigen_smooth.

:class:`HostMethods` is a part of :class:`~onnx_gradcam.explainer.Explainer`; it uses the explainer's
sessions, layers and targets.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx

from . import maps
from .autodiff.emit import Emitter
from .build import CAM_OUTPUT, IMAGE_SIZE_INPUT
from .explanation import Explanation, Images, Targets
from .graph.assemble import tensor_info, with_outputs
from .graph.head import cut_head
from .graph.layers import Layer
from .graph.model import set_ir_version
from .methods import HOST_METHODS, eigen, perturbation
from .runtime import make_session
from .several import several_per_image
from .targets import Probability


class HostMethods:
    def _explain_on_host(self, images: Images, targets: Targets) -> Explanation:
        if several_per_image(targets):
            raise ValueError(f"{self.method} takes one target per image")
        feeds = self._feeds(images)
        wanted = (lambda b: b.contribution_outputs) if self.method not in HOST_METHODS else (
            lambda b: b.activation_outputs + b.gradient_outputs)
        built, values = self._run(feeds, targets, lambda b: b.model_outputs + wanted(b) +
                                  ([b.class_output] if b.class_output else []))
        outputs = values[self.output]
        seeds = self._seeds(targets, outputs, values.get(built.class_output) if built.class_output else None)
        raws = []
        for layer, gradient, contribution in zip(self.layers, built.gradient_outputs, built.contribution_outputs):
            if self.method not in HOST_METHODS:  # eigen_smooth of a gradient method
                raws.append(np.maximum(eigen.project_2d(map_as_nchw(values[contribution], layer)), 0))
                continue
            activations = as_nchw(values[layer.tensor], layer)
            if self.method == "eigencam":
                raw = eigen.eigencam(activations)
            elif self.method == "eigengradcam":
                raw = eigen.eigengradcam(activations, as_nchw(values[gradient], layer))
            elif self.method == "scorecam":
                raw = self._score_cam(layer, activations, feeds, seeds)
            else:
                raw = self._ablation_cam(layer, activations, values[layer.tensor], feeds, seeds, outputs)
            raws.append(raw)
        return Explanation(cams=self._finish(raws, self._image_size(feeds)), raw=dict(zip(self.layer_keys, raws)),
                           outputs={name: values[name] for name in built.model_outputs},
                           classes=values.get(built.class_output) if built.class_output else None,
                           layers=list(self.layers))

    def _seeds(self, targets: Targets, outputs: np.ndarray, classes: Optional[np.ndarray]) -> np.ndarray:
        """The score of each image is sum(seed * output): one-hot rows for class targets."""
        if classes is None:
            return self._target_feed(targets, len(outputs))[1]
        if any(isinstance(t, Probability) for t in (targets if isinstance(targets, (list, tuple)) else [targets])):
            raise ValueError(f"{self.method} explains logits, masks, detections or seeds, not probabilities")
        seeds = np.zeros_like(outputs)
        seeds[np.arange(len(classes)), classes] = 1
        return seeds

    def _score_cam(self, layer: Layer, activations: np.ndarray, feeds: dict, seeds: np.ndarray) -> np.ndarray:
        session = self._model_session()
        others = {name: value for name, value in feeds.items() if name != self.image_input}

        def score(masked: np.ndarray, index: int) -> np.ndarray:
            (out,) = session.run([self.output], {**_repeated_row(others, index, len(masked)),
                                                 self.image_input: masked.astype(np.float32)})
            self.runs["model"] += 1
            return _scores(out, seeds[index])

        weights = perturbation.score_cam_weights(activations, feeds[self.image_input], self.image_layout == "NCHW",
                                                 score, self.batch_size)
        return self._weighted(weights, activations)

    def _weighted(self, weights: np.ndarray, activations: np.ndarray) -> np.ndarray:
        if self.eigen_smooth:
            return np.maximum(eigen.project_2d(weights[:, :, None, None] * activations), 0)
        return perturbation.weighted_map(weights, activations)

    def _ablation_cam(self, layer: Layer, activations: np.ndarray, original: np.ndarray, feeds: dict,
                      seeds: np.ndarray, outputs: np.ndarray) -> np.ndarray:
        head, body, session = self._head_for(layer)
        boundary = dict(zip(head.inputs[1:], body.run(head.inputs[1:], feeds))) if head.inputs[1:] else {}
        self.runs["body"] += bool(boundary)

        def score(ablated: np.ndarray, index: int) -> np.ndarray:
            layer_rows = from_nchw(ablated, layer, original[index]).astype(original.dtype)
            (out,) = session.run([self.output], {**_repeated_row(boundary, index, len(ablated)),
                                                 layer.tensor: layer_rows})
            self.runs["head"] += 1
            return _scores(out, seeds[index])

        scores = _scores(outputs, seeds)
        weights = perturbation.ablation_cam_weights(activations, scores, score, self.batch_size)
        return self._weighted(weights, activations)

    def _model_session(self):
        if "model" not in self._sessions:
            self._sessions["model"] = self._make_session(with_outputs(self.view, [self.output]))
        return self._sessions["model"]

    def _head_for(self, layer: Layer):
        """(head, body session giving the head's other inputs, head session) for one layer."""
        key = f"ablation/{layer.tensor}"
        if key not in self._sessions:
            head = cut_head(self.view, [layer.tensor], self.output)
            body = self._make_session(with_outputs(self.view, head.inputs[1:])) if head.inputs[1:] else None
            self._sessions[key] = (head, body, self._make_session(head.model))
        return self._sessions[key]

    def _finish(self, raws: list[np.ndarray], size) -> np.ndarray:
        """Host maps through the same post-processing as the explainer model's (a small ONNX model)."""
        key = f"maps/{len(raws)}"
        if key not in self._sessions:
            e = Emitter("maps/", set())
            names = [f"raw_{i}" for i in range(len(raws))]
            cam = maps.combine(e, [maps.upsample(e, maps.normalize(e, name), IMAGE_SIZE_INPUT) for name in names])
            graph = onnx.helper.make_graph(
                e.nodes + [onnx.helper.make_node("Identity", [cam], [CAM_OUTPUT])], "maps",
                [tensor_info(n, onnx.TensorProto.FLOAT, ["N", None, None]) for n in names] +
                [tensor_info(IMAGE_SIZE_INPUT, onnx.TensorProto.INT64, [2])],
                [tensor_info(CAM_OUTPUT, onnx.TensorProto.FLOAT, ["N", None, None])], initializer=e.initializers)
            model = set_ir_version(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]))
            self._sessions[key] = make_session(model, self.providers, self._new_options())
        feeds = {f"raw_{i}": raw.astype(np.float32) for i, raw in enumerate(raws)}
        (cams,) = self._sessions[key].run([CAM_OUTPUT], {**feeds, IMAGE_SIZE_INPUT: np.asarray(size, np.int64)})
        return cams


def _scores(outputs: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The target's score per row: sum(seed * output) (a one-hot seed picks a class's logit)."""
    return (outputs * seeds).reshape(len(outputs), -1).sum(axis=1)


def _repeated_row(values: dict, index: int, count: int) -> dict:
    """Image ``index``'s row of every array in ``values``, repeated ``count`` times."""
    return {name: np.repeat(value[index:index + 1], count, axis=0) for name, value in values.items()}


def as_nchw(values: np.ndarray, layer: Layer) -> np.ndarray:
    """A layer's tensor as an NCHW map (token activations laid on their grid first)."""
    if layer.tokens is not None:
        grid = layer.tokens
        values = values[:, grid.skip:].reshape(len(values), grid.height, grid.width, -1)
    return map_as_nchw(values, layer)


def map_as_nchw(values: np.ndarray, layer: Layer) -> np.ndarray:
    """A tensor already laid out as the layer's map (tokens on their grid) as NCHW."""
    return values.transpose(0, 3, 1, 2) if layer.layout == "NHWC" else values


def from_nchw(values: np.ndarray, layer: Layer, original: np.ndarray) -> np.ndarray:
    """The inverse of :func:`as_nchw`; skipped tokens are taken from ``original`` (one image's tensor)."""
    if layer.tokens is not None:
        tokens = values.transpose(0, 2, 3, 1).reshape(len(values), -1, values.shape[1])
        skipped = np.repeat(original[None, :layer.tokens.skip], len(values), axis=0)
        return np.concatenate([skipped, tokens], axis=1)
    return values.transpose(0, 2, 3, 1) if layer.layout == "NHWC" else values
