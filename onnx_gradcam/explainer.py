"""The ``Explainer``: Grad-CAM for any ONNX model, run as one ONNX Runtime session per batch."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from . import maps
from . import metadata as metadata_schema
from .autodiff.emit import Emitter
from .build import CAM_OUTPUT, IMAGE_SIZE_INPUT, ExplainerModel, build_explainer_model
from .graph import weights
from .graph.assemble import extend_model, tensor_info
from .graph.head import cut_head
from .graph.layers import Layer, TokenGrid, candidate_layers, resolve_layer
from .graph.layout import guess_input_layout
from .graph.model import ModelLike, load_model, normalize, set_ir_version
from .graph.view import GraphView
from .methods import HOST_METHODS, check_method, eigen, perturbation
from .runtime import Providers, default_options, make_session, resolve_providers
from .targets import TOP_CLASS, Detection, Mask, Probability

Images = Union[np.ndarray, Mapping[str, np.ndarray]]
Targets = Union[None, int, Sequence[int], np.ndarray]


@dataclass
class Explanation:
    """What one call of an :class:`Explainer` returns.

    ``cams``: (N, H, W) float32 maps in [0, 1] at the input's resolution; ``raw``: per layer (keyed by the
    name the user gave, "auto" by the layer's own name), the (N, h, w) maps at the layer's resolution before upsampling and normalisation; ``outputs``:
    the model's own outputs by name; ``classes``: the class explained for each image (None for seed targets).
    """

    cams: np.ndarray
    raw: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    classes: Optional[np.ndarray]
    layers: list[Layer] = field(default_factory=list)


@dataclass
class LayerGradients:
    """A layer's activations and d(target)/d(activations), both in the layer's own layout."""

    activations: np.ndarray
    gradients: np.ndarray


class Explainer:
    """Explain an ONNX model's decisions with a CAM method, on ONNX Runtime.

    Args:
        model: a path, serialized bytes or ``onnx.ModelProto``. It is copied, never modified.
        layer: ``"auto"`` (the last rank-4 activation before the spatial dims are pooled away), a framework
            layer name (PyTorch module path, Keras layer name) or a tensor name; or a list of these, whose maps
            are averaged into one.
        method: the CAM method: ``gradcam``, ``hirescam``, ``gradcam-elementwise``, ``gradcam++``, ``xgradcam``,
            ``layercam`` (computed inside the explainer model), ``eigencam``, ``eigengradcam``, ``scorecam``,
            ``ablationcam`` (on the host, around ONNX Runtime sessions).
        output: which model output to explain (name or index); the first by default.
        providers: ``"auto"`` (CUDA when it works here, else the CPU) or ONNX Runtime provider names.
        session_options: a function returning fresh ``onnxruntime.SessionOptions`` (threads, spinning, ...),
            called once per session: each session's options carry that session's weights.
        tokens: a :class:`TokenGrid` for transformer layers whose activations are (N, tokens, C).
        batch_size: perturbed inputs per session run for Score-CAM and Ablation-CAM.
        max_batch: the most images per session run; larger batches are split (None: as many as fit).
        eigen_smooth: the map is the first principal component of the method's per-channel contributions
            (on the host) instead of their sum, as pytorch-grad-cam's ``eigen_smooth``.
    """

    def __init__(self, model: ModelLike, layer: Union[str, Sequence[str]] = "auto", method: str = "gradcam",
                 output: Union[str, int, None] = None, providers: Providers = "auto",
                 session_options: Optional[Callable[[], object]] = None, tokens: Optional[TokenGrid] = None,
                 batch_size: int = 32, max_batch: Optional[int] = None, eigen_smooth: bool = False):
        self._source = model
        light, self._weights = _load_light(model)
        self.view = GraphView(normalize(light))
        self.metadata = metadata_schema.read(self.view.model)
        self.output = _resolve_output(self.view, output)
        candidates = candidate_layers(self.view, self.output, self.metadata)
        specs = [layer] if isinstance(layer, str) else list(layer)
        self.layers = [resolve_layer(self.view, spec, self.output, candidates, self.metadata, tokens)
                       for spec in specs]
        # Results are keyed by the name the user gave ("auto" by the layer's own name).
        self.layer_keys = [layer.display_name if spec == "auto" else spec for spec, layer in zip(specs, self.layers)]
        self._candidates = candidates
        self.method = check_method(method)  # fail now, not at the first call, on an unknown name
        self.batch_size = batch_size
        self.max_batch = max_batch
        self.eigen_smooth = eigen_smooth
        self.image_input, self.image_layout = _image_input(self.view, self.metadata)
        self.providers = resolve_providers(providers)
        if session_options is not None and not callable(session_options):
            raise TypeError("session_options takes a function returning onnxruntime.SessionOptions (each "
                            "session needs options of its own), e.g. session_options=lambda: my_options()")
        self._new_options = session_options or default_options
        self._built: dict[str, ExplainerModel] = {}
        self._sessions: dict[str, object] = {}
        self.runs: Counter = Counter()
        """Session runs so far, by kind: "explainer" (whole model), "body" and "head" (several targets)."""

    # --- the explainer model ---------------------------------------------------------------------------------
    def explainer_model(self, target: str = "class") -> ExplainerModel:
        """The ONNX model that computes outputs, gradients and maps (``target``: ``"class"`` or ``"seed"``)."""
        if target not in self._built:
            self._built[target] = build_explainer_model(
                self.view, self.layers, self.output, None if self.method in HOST_METHODS else self.method, target,
                self.image_input, self.image_layout, self._layers_after, contributions_only=self.eigen_smooth)
        return self._built[target]

    def save(self, path: str, target: str = "class") -> None:
        """Write the explainer model, weights included: it runs in any ONNX Runtime, without this package."""
        model = onnx.ModelProto()
        model.CopyFrom(self.explainer_model(target).model)
        weights.attach(model, self._take_weights())
        onnx.save(model, path, save_as_external_data=model.ByteSize() > 2**31 - 2**26)

    def _layers_after(self, node: onnx.NodeProto) -> list[str]:
        """Candidate layers computed by ``node`` or after it, nearest first (for the no-rule error)."""
        position = self.view.position[node.name]
        producers = self.view.producer
        return [layer.display_name for layer in self._candidates
                if layer.tensor in producers and self.view.position[producers[layer.tensor].name] >= position]

    def _session(self, target: str):
        if target not in self._sessions:
            self._sessions[target] = self._make_session(self.explainer_model(target).model)
        return self._sessions[target]

    def _make_session(self, model: onnx.ModelProto):
        # ONNX Runtime copies the detached weights in while it loads, then drops them from the options;
        # the arrays must live until then.
        names, values = weights.ort_values(self._take_weights(), weights.placeholders(model))
        options = self._new_options()
        options.add_external_initializers(names, values)
        return make_session(model, self.providers, options)

    @property
    def _on_host(self) -> bool:
        return self.method in HOST_METHODS or self.eigen_smooth

    def _take_weights(self) -> dict:
        """The detached weights, handed over once: later needs reload them from the source, so no second
        copy of the weights lives beside ONNX Runtime's."""
        taken, self._weights = self._weights, None
        return taken if taken is not None else _load_light(self._source)[1]

    # --- running -----------------------------------------------------------------------------------------------
    def __call__(self, images: Images, targets: Targets = None, aug_smooth: bool = False) -> Explanation:
        """Explain a batch: ``images`` in the model's own input layout.

        ``targets``: None (the top class), a class index for all images, one class index per image, a list of
        class indices per image (several maps per image: the network's body runs once, the head once per
        target), :class:`~onnx_gradcam.targets.Probability`, :class:`~onnx_gradcam.targets.Mask` or
        :class:`~onnx_gradcam.targets.Detection` targets (one, or one per image), or a float seed array shaped
        like the explained output.
        ``aug_smooth``: average the maps of six test-time augmentations (horizontal flip x brightness 0.9, 1,
        1.1), each flipped back, as pytorch-grad-cam's ``aug_smooth``.

        Batches larger than ``max_batch`` (or than ONNX Runtime can allocate) are split and the results joined.
        """
        if aug_smooth:
            return self._augmented(images, targets)
        feeds = self._feeds(images)
        batch = len(feeds[self.image_input])
        if batch <= (self.max_batch or batch):
            try:
                return self._explain(feeds, targets)
            except Exception as error:  # noqa: BLE001  (only allocation failures are retried)
                if batch == 1 or not _out_of_memory(error):
                    raise
                self.max_batch = batch // 2
        chunks = [_rows(feeds, start, start + self.max_batch) for start in range(0, batch, self.max_batch)]
        return _join([self(chunk, _target_rows(targets, start, start + self.max_batch, batch))
                      for chunk, start in zip(chunks, range(0, batch, self.max_batch))])

    def _explain(self, images: Images, targets: Targets) -> Explanation:
        if self._on_host:
            return self._explain_on_host(images, targets)
        if _several_per_image(targets):
            return self._explain_several(images, targets)
        built, values = self._run(images, targets, lambda b: b.model_outputs + b.raw_outputs + [CAM_OUTPUT] +
                                  ([b.class_output] if b.class_output else []))
        return Explanation(
            cams=values[CAM_OUTPUT],
            raw={key: values[name] for key, name in zip(self.layer_keys, built.raw_outputs)},
            outputs={name: values[name] for name in built.model_outputs},
            classes=values.get(built.class_output) if built.class_output else None,
            layers=list(self.layers),
        )

    def _augmented(self, images: Images, targets: Targets) -> Explanation:
        """Mean over flips x brightness factors, each map flipped back (the un-augmented run gives outputs)."""
        feeds = self._feeds(images)
        width_axis = 3 if self.image_layout == "NCHW" else 2
        runs = []
        for flip in (False, True):
            for factor in AUG_FACTORS:
                image = feeds[self.image_input] * np.float32(factor)
                image = np.flip(image, width_axis) if flip else image
                result = self({**feeds, self.image_input: np.ascontiguousarray(image)}, targets)
                if flip:
                    result.cams = np.flip(result.cams, -1)
                    result.raw = {key: np.flip(value, -1) for key, value in result.raw.items()}
                runs.append(result)
        plain = runs[AUG_FACTORS.index(1.0)]
        plain.cams = np.mean([r.cams for r in runs], axis=0).astype(np.float32)
        plain.raw = {key: np.mean([r.raw[key] for r in runs], axis=0) for key in plain.raw}
        return plain

    def gradients(self, images: Images, targets: Targets = None) -> dict[str, LayerGradients]:
        """Per layer (keyed as given): its activations and d(target)/d(activations), as NumPy arrays."""
        built, values = self._run(images, targets, lambda b: b.activation_outputs + b.gradient_outputs)
        return {key: LayerGradients(values[layer.tensor], values[grad])
                for key, layer, grad in zip(self.layer_keys, self.layers, built.gradient_outputs)}

    def _run(self, images: Images, targets: Targets, wanted):
        feeds = self._feeds(images)
        batch = len(next(iter(feeds.values())))
        target, value = self._target_feed(targets, batch)
        built = self.explainer_model(target)
        names = wanted(built)
        results = self._session(target).run(names, {**feeds, built.target_input: value})
        self.runs["explainer"] += 1
        return built, dict(zip(names, results))

    def _feeds(self, images: Images) -> dict[str, np.ndarray]:
        inputs = self.view.input_names
        if isinstance(images, Mapping):
            missing = set(inputs) - set(images)
            if missing:
                raise ValueError(f"missing model inputs {sorted(missing)}; the model takes {inputs}")
            return {name: np.asarray(images[name]) for name in inputs}
        if len(inputs) != 1:
            raise ValueError(f"the model takes several inputs {inputs}: pass a dict of arrays")
        array = np.asarray(images)
        expected = self.view.rank(inputs[0])
        if expected is not None and array.ndim != expected:
            raise ValueError(f"input {inputs[0]!r} takes rank-{expected} arrays {self.view.shape(inputs[0])}, "
                             f"got shape {array.shape}")
        return {inputs[0]: array}

    def _target_feed(self, targets: Targets, batch: int) -> tuple[str, np.ndarray]:
        if isinstance(targets, np.ndarray) and targets.dtype.kind == "f":
            return "seed", targets
        listed = list(targets) if isinstance(targets, (list, tuple)) else [targets]
        if listed and all(isinstance(t, (Mask, Detection)) for t in listed):
            return "seed", self._host_seeds(listed, batch)
        kind = "probability" if listed and all(isinstance(t, Probability) for t in listed) else "class"
        if targets is None:
            classes = np.full(batch, TOP_CLASS, dtype=np.int64)
        else:
            values = [TOP_CLASS if isinstance(t, Probability) and t.class_index is None else
                      t.class_index if isinstance(t, Probability) else t for t in listed]
            classes = np.asarray(values, dtype=np.int64).reshape(-1)
        if classes.size == 1:
            classes = np.repeat(classes, batch)
        if classes.size != batch:
            raise ValueError(f"{classes.size} targets for {batch} images: give one class per image or one "
                             "class for all")
        return kind, classes

    def _host_seeds(self, targets: list, batch: int) -> np.ndarray:
        """One seed per image from Mask / Detection targets (one target for all images, or one each)."""
        if len(targets) == 1:
            targets = targets * batch
        if len(targets) != batch:
            raise ValueError(f"{len(targets)} targets for {batch} images")
        shape = self.view.shape(self.output)[1:]
        if not all(isinstance(d, int) for d in shape):
            raise ValueError(f"output {self.output!r} has shape {self.view.shape(self.output)}: Mask and Detection "
                             "targets need its non-batch dims known; pass a seed array instead")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(self.view.elem_type(self.output))
        return np.stack([target.seed(shape, dtype) for target in targets])

    # --- methods computed on the host: EigenCAM, EigenGradCAM, Score-CAM, Ablation-CAM ------------------------------
    def _explain_on_host(self, images: Images, targets: Targets) -> Explanation:
        if _several_per_image(targets):
            raise ValueError(f"{self.method} takes one target per image")
        feeds = self._feeds(images)
        wanted = (lambda b: b.contribution_outputs) if self.method not in HOST_METHODS else (
            lambda b: b.activation_outputs + b.gradient_outputs)
        built, values = self._run(images, targets, lambda b: b.model_outputs + wanted(b) +
                                  ([b.class_output] if b.class_output else []))
        outputs = values[self.output]
        seeds = self._seeds(targets, outputs, values.get(built.class_output) if built.class_output else None)
        raws = []
        for layer, gradient, contribution in zip(self.layers, built.gradient_outputs, built.contribution_outputs):
            if self.method not in HOST_METHODS:  # eigen_smooth of a gradient method
                raws.append(np.maximum(eigen.project_2d(_map_as_nchw(values[contribution], layer)), 0))
                continue
            activations = _as_nchw(values[layer.tensor], layer)
            if self.method == "eigencam":
                raw = eigen.eigencam(activations)
            elif self.method == "eigengradcam":
                raw = eigen.eigengradcam(activations, _as_nchw(values[gradient], layer))
            elif self.method == "scorecam":
                raw = self._score_cam(layer, activations, feeds, seeds)
            else:
                raw = self._ablation_cam(layer, activations, values[layer.tensor], feeds, seeds, outputs)
            raws.append(raw)
        image = feeds[self.image_input]
        size = image.shape[2:4] if self.image_layout == "NCHW" else image.shape[1:3]
        return Explanation(cams=self._finish(raws, size), raw=dict(zip(self.layer_keys, raws)),
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
            rows = {name: np.repeat(value[index:index + 1], len(masked), axis=0) for name, value in others.items()}
            (out,) = session.run([self.output], {**rows, self.image_input: masked.astype(np.float32)})
            self.runs["model"] += 1
            return (out * seeds[index]).reshape(len(out), -1).sum(axis=1)

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
            rows = {name: np.repeat(value[index:index + 1], len(ablated), axis=0) for name, value in boundary.items()}
            layer_rows = _from_nchw(ablated, layer, original[index]).astype(original.dtype)
            (out,) = session.run([self.output], {**rows, layer.tensor: layer_rows})
            self.runs["head"] += 1
            return (out * seeds[index]).reshape(len(out), -1).sum(axis=1)

        scores = (outputs * seeds).reshape(len(outputs), -1).sum(axis=1)
        weights = perturbation.ablation_cam_weights(activations, scores, score, self.batch_size)
        return self._weighted(weights, activations)

    def _model_session(self):
        if "model" not in self._sessions:
            model = extend_model(self.view.model, [], keep_outputs=False, outputs=[
                tensor_info(self.output, self.view.elem_type(self.output), self.view.shape(self.output))])
            self._sessions["model"] = self._make_session(model)
        return self._sessions["model"]

    def _head_for(self, layer: Layer):
        """(head, body session giving the head's other inputs, head session) for one layer."""
        key = f"ablation/{layer.tensor}"
        if key not in self._sessions:
            head = cut_head(self.view, [layer.tensor], self.output)
            body = extend_model(self.view.model, [], keep_outputs=False, outputs=[
                tensor_info(name, self.view.elem_type(name), self.view.shape(name)) for name in head.inputs[1:]])
            self._sessions[key] = (head, self._make_session(body) if head.inputs[1:] else None,
                                   self._make_session(head.model))
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

    # --- several targets per image: the body once, the head once per target -------------------------------------
    def _explain_several(self, images: Images, targets) -> Explanation:
        per_image = [list(t) for t in targets]
        feeds = self._feeds(images)
        if len(per_image) != len(next(iter(feeds.values()))):
            raise ValueError(f"{len(per_image)} target lists for {len(next(iter(feeds.values())))} images")
        counts = {len(t) for t in per_image}
        if len(counts) != 1:
            raise ValueError("give every image the same number of targets")
        (count,) = counts
        head, body, head_explainer = self._head_parts()
        values = dict(zip(head.inputs, self._body_session(body).run(head.inputs, feeds)))
        self.runs["body"] += 1
        repeated = {name: np.repeat(value, count, axis=0) for name, value in values.items()}
        image_shape = next(iter(feeds.values())).shape if len(feeds) == 1 else feeds[self.image_input].shape
        hw = image_shape[2:4] if self.image_layout == "NCHW" else image_shape[1:3]
        kind, classes = self._target_feed([c for t in per_image for c in t], len(per_image) * count)
        names = head_explainer.raw_outputs + [CAM_OUTPUT, head_explainer.class_output]
        results = dict(zip(names, self._head_session(kind, head_explainer).run(names, {
            **repeated, head_explainer.target_input: classes, IMAGE_SIZE_INPUT: np.asarray(hw, np.int64)})))
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
            self._body_model = extend_model(self.view.model, [], outputs=[
                tensor_info(name, self.view.elem_type(name), self.view.shape(name))
                for name in head.inputs if name not in self.view.output_names])
        return self._head, self._body_model, self._built["head"]

    def _body_session(self, body: onnx.ModelProto):
        if "body" not in self._sessions:
            self._sessions["body"] = self._make_session(body)
        return self._sessions["body"]

    def _head_session(self, kind: str, head_explainer: ExplainerModel):
        if kind != "class":
            raise ValueError("several targets per image take class indices")
        if "head" not in self._sessions:
            self._sessions["head"] = self._make_session(head_explainer.model)
        return self._sessions["head"]


AUG_FACTORS = (0.9, 1.0, 1.1)
"""Brightness factors of ``aug_smooth`` (ttach's Multiply, as pytorch-grad-cam uses it)."""


def _out_of_memory(error: Exception) -> bool:
    text = str(error).lower()
    return "failed to allocate" in text or "bad_alloc" in text or "bad allocation" in text


def _rows(feeds: dict, start: int, stop: int) -> dict:
    return {name: value[start:stop] for name, value in feeds.items()}


def _target_rows(targets, start: int, stop: int, batch: int):
    """The targets of images ``start:stop``: per-image targets are sliced, one target for all is kept."""
    if isinstance(targets, np.ndarray) and targets.ndim > 0 and len(targets) == batch:
        return targets[start:stop]
    if isinstance(targets, (list, tuple)) and len(targets) == batch:
        return list(targets[start:stop])
    return targets


def _join(parts: list) -> "Explanation":
    def cat(values):
        return None if values[0] is None else np.concatenate(values)

    first = parts[0]
    return Explanation(cams=cat([p.cams for p in parts]),
                       raw={key: cat([p.raw[key] for p in parts]) for key in first.raw},
                       outputs={key: cat([p.outputs[key] for p in parts]) for key in first.outputs},
                       classes=cat([p.classes for p in parts]), layers=first.layers)


def _as_nchw(values: np.ndarray, layer: Layer) -> np.ndarray:
    """A layer's tensor as an NCHW map (token activations laid on their grid first)."""
    if layer.tokens is not None:
        grid = layer.tokens
        values = values[:, grid.skip:].reshape(len(values), grid.height, grid.width, -1)
    return _map_as_nchw(values, layer)


def _map_as_nchw(values: np.ndarray, layer: Layer) -> np.ndarray:
    """A tensor already laid out as the layer's map (tokens on their grid) as NCHW."""
    return values.transpose(0, 3, 1, 2) if layer.layout == "NHWC" else values


def _from_nchw(maps: np.ndarray, layer: Layer, original: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_as_nchw`; skipped tokens are taken from ``original`` (one image's tensor)."""
    if layer.tokens is not None:
        tokens = maps.transpose(0, 2, 3, 1).reshape(len(maps), -1, maps.shape[1])
        skipped = np.repeat(original[None, :layer.tokens.skip], len(maps), axis=0)
        return np.concatenate([skipped, tokens], axis=1)
    return maps.transpose(0, 2, 3, 1) if layer.layout == "NHWC" else maps


def _several_per_image(targets) -> bool:
    return isinstance(targets, (list, tuple)) and len(targets) > 0 and all(
        isinstance(t, (list, tuple, np.ndarray)) for t in targets)


def _load_light(model: ModelLike) -> tuple[onnx.ModelProto, dict]:
    """A private copy of ``model`` whose large weights are detached into arrays."""
    light = load_model(model)
    weights.constants_to_initializers(light)
    return light, weights.detach(light)


def _resolve_output(view: GraphView, output: Union[str, int, None]) -> str:
    names = view.output_names
    if output is None:
        return names[0]
    if isinstance(output, int):
        if not -len(names) <= output < len(names):
            raise ValueError(f"output index {output} is out of range; the model has outputs {names}")
        return names[output]
    if output not in names:
        raise ValueError(f"no output named {output!r}; the model's outputs are {names}")
    return output


def _image_input(view: GraphView, meta: metadata_schema.Metadata) -> tuple[str, str]:
    """The first float rank-4 input, and its layout (from metadata, else guessed from where channels sit)."""
    for name in view.input_names:
        shape = view.shape(name)
        if view.is_float(name) and shape is not None and len(shape) == 4:
            return name, meta.input_layout or guess_input_layout(shape)
    raise ValueError(f"the model has no image input of rank 4; its inputs are {view.input_names}")
