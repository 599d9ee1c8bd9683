"""Methods computed on the host around ONNX Runtime sessions: EigenCAM, EigenGradCAM (an SVD), Score-CAM
(the whole model on masked inputs), Ablation-CAM (the cut-out head on ablated activations), and
``eigen_smooth`` of a gradient method (the SVD of the contributions the explainer model computes)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx

from . import maps
from .explainer_models import ExplainerModels
from .explanation import Explanation
from .graph.assemble import tensor_info, with_outputs
from .graph.builder import NodeBuilder
from .graph.head import Head, cut_head_at
from .graph.layers import Layer
from .graph.model import set_ir_version
from .methods import HOST_METHODS, LayerEvidence, eigen
from .sessions import Kind, SessionCache, SessionKey
from .targets import Seeding, TargetFeed

IMAGE_SIZE = "image_size"
CAM = "cam"
LAYER_CAM = "cam_{}"


class OnHost:
    """The way of computing for host methods and for ``eigen_smooth``. ``perturbations_per_run``: perturbed
    inputs per session run (Score-CAM, Ablation-CAM)."""

    def __init__(self, models: ExplainerModels, method: str, eigen_smooth: bool, perturbations_per_run: int):
        self.models = models
        self.subject = models.subject
        self.sessions: SessionCache = models.sessions
        self.method = method
        self.eigen_smooth = eigen_smooth
        self.perturbations_per_run = perturbations_per_run
        self._heads: dict[str, Head] = {}

    def explain(self, feeds: Mapping[str, np.ndarray], target: TargetFeed) -> Explanation:
        if target.seeding is Seeding.PROBABILITY:
            raise ValueError(f"{self.method} explains logits, masks, detections or seeds, not probabilities")
        host_method = HOST_METHODS.get(self.method)
        with_gradients = host_method is not None and host_method.needs_gradients
        built, values = self.models.run(feeds, target, lambda b: [
            *b.model_outputs, *b.activations, *(b.gradients if with_gradients else []), *b.contributions,
            *([b.class_output] if b.class_output else [])])
        outputs = values[self.subject.output]
        seeds = _seeds(target, outputs, values.get(built.class_output))
        raws = []
        for index, layer in enumerate(self.subject.layers):
            if host_method is None:  # eigen_smooth of a gradient method
                raw = np.maximum(eigen.project_2d(map_as_nchw(values[built.contributions[index]], layer)), 0)
            else:
                raw = host_method.raw_map(LayerEvidence(
                    activations=as_nchw(values[layer.tensor], layer),
                    gradients=as_nchw(values[built.gradients[index]], layer) if with_gradients else None,
                    images=feeds[self.subject.image_input], channels_first=self.subject.image_layout == "NCHW",
                    scores=_scores(outputs, seeds), score_images=self._image_scorer(feeds, seeds),
                    score_activations=self._activation_scorer(layer, values[layer.tensor], feeds, seeds),
                    per_run=self.perturbations_per_run, eigen_smooth=self.eigen_smooth))
            raws.append(_finite(raw, self.method, self.subject.keys[index]))
        cams, layer_cams = self._finish(raws, self.subject.image_size(feeds))
        return Explanation(cams=cams, raw=dict(zip(self.subject.keys, raws)),
                           outputs={name: values[name] for name in built.model_outputs},
                           classes=values.get(built.class_output), layers=list(self.subject.layers),
                           layer_cams=dict(zip(self.subject.keys, layer_cams)))

    def _image_scorer(self, feeds: Mapping[str, np.ndarray], seeds: np.ndarray):
        """Scores of masked copies of one image, from the model restricted to the explained output."""
        image_input, output = self.subject.image_input, self.subject.output
        others = {name: value for name, value in feeds.items() if name != image_input}
        key = SessionKey(Kind.MODEL, output)

        def score(masked: np.ndarray, index: int) -> np.ndarray:
            inputs = {**_repeated_row(others, index, len(masked)),
                      image_input: masked.astype(feeds[image_input].dtype)}
            values = self.sessions.run(key, lambda: with_outputs(self.subject.view, [output]), [output], inputs)
            return _scores(values[output], seeds[index])

        return score

    def _activation_scorer(self, layer: Layer, original: np.ndarray, feeds: Mapping[str, np.ndarray],
                           seeds: np.ndarray):
        """Scores of one image's head on ablated copies of the layer's activations (the body runs once, lazily)."""
        output = self.subject.output
        boundary: dict[str, np.ndarray] = {}

        def score(ablated: np.ndarray, index: int) -> np.ndarray:
            head = self._head(layer)
            others = head.inputs[1:]
            if others and not boundary:
                boundary.update(self.sessions.run(SessionKey(Kind.BODY, tuple(others)),
                                                  lambda: with_outputs(self.subject.view, others), others, feeds))
            inputs = {**_repeated_row(boundary, index, len(ablated)),
                      layer.tensor: from_nchw(ablated, layer, original[index]).astype(original.dtype)}
            values = self.sessions.run(SessionKey(Kind.HEAD, layer.tensor), lambda: head.model, [output], inputs)
            return _scores(values[output], seeds[index])

        return score

    def _head(self, layer: Layer) -> Head:
        if layer.tensor not in self._heads:
            self._heads[layer.tensor] = cut_head_at(self.subject.view, [layer], self.subject.output)
        return self._heads[layer.tensor]

    def _finish(self, raws: list[np.ndarray], size) -> tuple[np.ndarray, list[np.ndarray]]:
        """Host maps through the same post-processing as the explainer model's (a small ONNX model): (the
        final map, each layer's own)."""
        dtype = np.result_type(*raws, np.float32)
        key = SessionKey(Kind.MAPS, (len(raws), dtype.str))
        feeds = {f"raw_{i}": raw.astype(dtype) for i, raw in enumerate(raws)}
        names = [CAM] if len(raws) == 1 else [CAM, *(LAYER_CAM.format(i) for i in range(len(raws)))]
        values = self.sessions.run(key, lambda: _maps_model(len(raws), dtype), names,
                                   {**feeds, IMAGE_SIZE: np.asarray(size, np.int64)})
        return values[CAM], [values[name] for name in names[-len(raws):]]


def _maps_model(count: int, dtype: np.dtype) -> onnx.ModelProto:
    """raw_0 .. raw_<count-1> (N, h, w) and image_size (H, W) -> cam (N, H, W) float32 and, for several layers,
    cam_0 .. cam_<count-1>, each layer's own, as in the explainer model."""
    elem_type = onnx.helper.np_dtype_to_tensor_dtype(dtype)
    names = [f"raw_{i}" for i in range(count)]
    outputs = [CAM] if count == 1 else [CAM, *(LAYER_CAM.format(i) for i in range(count))]
    b = NodeBuilder([*names, IMAGE_SIZE, *outputs], {name: elem_type for name in names}.get)
    cam, layer_cams = maps.finish(b, names, IMAGE_SIZE)
    b.rename(cam, CAM)
    if count > 1:
        for index, layer_cam in enumerate(layer_cams):
            b.rename(layer_cam, LAYER_CAM.format(index))
    graph = onnx.helper.make_graph(
        b.nodes, "maps",
        [tensor_info(n, elem_type, ["N", None, None]) for n in names]
        + [tensor_info(IMAGE_SIZE, onnx.TensorProto.INT64, [2])],
        [tensor_info(name, maps.CAM_TYPE, ["N", None, None]) for name in outputs], initializer=b.initializers)
    return set_ir_version(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)]))


def _finite(raw: np.ndarray, method: str, layer: str) -> np.ndarray:
    """``raw``, or an error where the method's arithmetic left NaN or inf in it (never a silent NaN map)."""
    if not np.isfinite(raw).all():
        raise FloatingPointError(f"{method} at layer {layer!r} gave non-finite values (NaN or inf): the model's "
                                 "scores on the perturbed inputs overflowed in its float type")
    return raw


def _seeds(target: TargetFeed, outputs: np.ndarray, classes) -> np.ndarray:
    """The score of each image is sum(seed * output): one-hot rows for class targets."""
    if classes is None:
        return target.values
    seeds = np.zeros_like(outputs)
    seeds[np.arange(len(classes)), classes] = 1
    return seeds


def _scores(outputs: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The target's score per row: sum(seed * output) (a one-hot seed picks a class's logit)."""
    return (outputs * seeds).sum(axis=tuple(range(1, outputs.ndim)))  # (0, ...) rows give (0,), not an error


def _repeated_row(values: Mapping[str, np.ndarray], index: int, count: int) -> dict:
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
