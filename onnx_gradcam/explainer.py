"""The ``Explainer``: Grad-CAM for any ONNX model, run as one ONNX Runtime session per batch."""

from __future__ import annotations

from collections import Counter
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from . import metadata as metadata_schema
from .build import CAM_OUTPUT, ExplainerModel, build_explainer_model, deployable_model
from .explanation import Explanation, Images, LayerGradients, Targets, join, out_of_memory, rows, target_rows
from .graph import weights
from .graph.layers import TokenGrid, candidate_layers, resolve_layer
from .graph.layout import guess_input_layout
from .graph.model import ModelLike, load_model, normalize
from .graph.view import GraphView
from .host import HostMethods
from .methods import GRADIENT_METHODS, HOST_METHODS, check_method
from .runtime import Providers, default_options, make_session, resolve_providers
from .several import SeveralTargets, several_per_image
from .targets import TOP_CLASS, Detection, Mask, Probability


class Explainer(HostMethods, SeveralTargets):
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
        layout: the image input's layout, ``"NCHW"`` or ``"NHWC"`` (default: from the model's metadata, else
            guessed from where its 1 or 3 channels sit).
    """

    def __init__(self, model: ModelLike, layer: Union[str, Sequence[str]] = "auto", method: str = "gradcam",
                 output: Union[str, int, None] = None, providers: Providers = "auto",
                 session_options: Optional[Callable[[], object]] = None, tokens: Optional[TokenGrid] = None,
                 batch_size: int = 32, max_batch: Optional[int] = None, eigen_smooth: bool = False,
                 layout: Optional[str] = None):
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
        self.image_input, self.image_layout = _image_input(self.view, self.metadata, layout)
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
        """Write the whole explainer model (activations, gradients, raw maps and ``cam``), weights included.

        To deploy, :meth:`export` writes the leaner model that computes only the original outputs and ``cam``.
        """
        self.write(self.explainer_model(target).model, path)

    def export(self, path: str, targets: str = "top") -> None:
        """Write a standalone ONNX model for deployment: the original inputs, the original outputs plus ``cam``
        ((N, H, W) float in [0, 1], at the image's size), for any batch size the model takes.

        ``targets``: ``"top"`` explains each image's top class; ``"input"`` adds an int64 input
        ``target_class`` (N,) with the class to explain per image (-1: the top class). It runs on a stock
        ONNX Runtime (no custom ops), without this package or a training framework. Gradient methods only:
        the others need the host between model runs.
        """
        self.write(self.exported_model(targets), path)

    def exported_model(self, targets: str = "top") -> onnx.ModelProto:
        """The model :meth:`export` writes, with its large weights left out (placeholders): its graph, inputs,
        outputs and metadata."""
        if targets not in EXPORT_TARGETS:
            raise ValueError(f"targets={targets!r}: use 'top' (each image's top class) or 'input' (a "
                             "target_class input)")
        if self._on_host:
            raise ValueError(f"{self.method}{' with eigen_smooth' if self.eigen_smooth else ''} needs work on the "
                             "host between model runs and cannot be exported as one ONNX model; exportable methods: "
                             f"{', '.join(GRADIENT_METHODS)}")
        model = deployable_model(self.explainer_model("top" if targets == "top" else "class"))
        meta = metadata_schema.read(model)
        meta.explainer = {"method": self.method, "layers": list(self.layer_keys), "output": self.output,
                          "targets": targets}
        metadata_schema.write(model, meta)
        return model

    def write(self, model: onnx.ModelProto, path: str) -> None:
        """Save a model built from this explainer's (:meth:`explainer_model`, :meth:`exported_model`) with the
        weights put back (external data only past protobuf's 2 GiB limit)."""
        complete = onnx.ModelProto()
        complete.CopyFrom(model)
        weights.attach(complete, self._take_weights())
        onnx.save(complete, path, save_as_external_data=complete.ByteSize() > 2**31 - 2**26)

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
                if batch == 1 or not out_of_memory(error):
                    raise
                self.max_batch = batch // 2
        chunks = [rows(feeds, start, start + self.max_batch) for start in range(0, batch, self.max_batch)]
        return join([self(chunk, target_rows(targets, start, start + self.max_batch, batch))
                      for chunk, start in zip(chunks, range(0, batch, self.max_batch))])

    def _explain(self, images: Images, targets: Targets) -> Explanation:
        if self._on_host:
            return self._explain_on_host(images, targets)
        if several_per_image(targets):
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

    def _image_size(self, feeds: dict) -> tuple[int, int]:
        """(H, W) of the image input in ``feeds``."""
        shape = feeds[self.image_input].shape
        return shape[2:4] if self.image_layout == "NCHW" else shape[1:3]

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

EXPORT_TARGETS = ("top", "input")
AUG_FACTORS = (0.9, 1.0, 1.1)
"""Brightness factors of ``aug_smooth`` (ttach's Multiply, as pytorch-grad-cam uses it)."""


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


def _image_input(view: GraphView, meta: metadata_schema.Metadata, layout: Optional[str]) -> tuple[str, str]:
    """The first float rank-4 input, and its layout (as given, from metadata, else guessed from where channels
    sit)."""
    if layout not in (None, "NCHW", "NHWC"):
        raise ValueError(f"layout={layout!r}: the image input's layout is 'NCHW' or 'NHWC'")
    for name in view.input_names:
        shape = view.shape(name)
        if view.is_float(name) and shape is not None and len(shape) == 4:
            return name, layout or meta.input_layout or guess_input_layout(shape)
    raise ValueError(f"the model has no image input of rank 4; its inputs are {view.input_names}")
