"""The ``Explainer``: Grad-CAM for any ONNX model, run as one ONNX Runtime session per batch.

It keeps the arguments, splits batches, applies ``aug_smooth`` and hands each batch to one way of computing:
:class:`~onnx_gradcam.in_graph.InGraph` (gradient methods), :class:`~onnx_gradcam.host.OnHost` (SVD and
perturbation methods, ``eigen_smooth``) or :class:`~onnx_gradcam.several.SeveralPerImage` (a list of classes
per image). What is explained is resolved once into a :class:`~onnx_gradcam.subject.Subject`; sessions and
weights live in a :class:`~onnx_gradcam.sessions.SessionCache`.
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from . import metadata as metadata_schema
from .build import deployable_model
from .explainer_models import ExplainerModels
from .explanation import Explanation, LayerGradients, join, join_gradients, out_of_memory, rows, target_rows
from .feeds import NONFINITE, Images, model_feeds, nonfinite_rows, with_stand_ins
from .graph.layers import Layer, TokenGrid
from .graph.model import ModelLike, normalize
from .graph.view import GraphView
from .host import OnHost
from .in_graph import InGraph
from .methods import GRADIENT_METHODS, HOST_METHODS, check_method
from .runtime import Providers, default_options, resolve_providers
from .sessions import SessionCache, load_light
from .several import SeveralPerImage
from .subject import Output, resolve_subject
from .targets import Seeding, TargetFeed, Targets, several_per_image, target_feed

EXPORT_TARGETS = {"top": Seeding.TOP, "input": Seeding.CLASS, "seed": Seeding.SEED}
AUG_FACTORS = (0.9, 1.0, 1.1)
"""Brightness factors of ``aug_smooth`` (ttach's Multiply, as pytorch-grad-cam uses it)."""


class Explainer:
    """Explain an ONNX model's decisions with a CAM method, on ONNX Runtime.

    Args:
        model: a path, serialized bytes or ``onnx.ModelProto``. It is copied, never modified.
        layer: ``"auto"`` (the last rank-4 activation before the spatial dims are pooled away), a framework
            layer name (PyTorch module path, Keras layer name) or a tensor name; or a list of these, or
            ``"all"`` (every candidate of :func:`~onnx_gradcam.list_layers`). Several layers are computed from
            one forward and one backward pass: ``cams`` is their maps averaged into one (as pytorch-grad-cam
            does), ``layer_cams`` each layer's own.
        method: the CAM method: ``gradcam``, ``hirescam``, ``gradcam-elementwise``, ``gradcam++``, ``xgradcam``,
            ``layercam`` (computed inside the explainer model), ``eigencam``, ``eigengradcam``, ``scorecam``,
            ``ablationcam`` (on the host, around ONNX Runtime sessions).
        output: which model output to explain (name or index); the first by default.
        providers: ``"auto"`` (CUDA when it works here, else the CPU) or ONNX Runtime provider names.
        session_options: a function returning fresh ``onnxruntime.SessionOptions`` (threads, spinning, ...),
            called once per session: each session's options carry that session's weights.
        tokens: a :class:`TokenGrid` for transformer layers whose activations are (N, tokens, C).
        perturbations_per_run: perturbed inputs per session run for Score-CAM and Ablation-CAM.
        max_batch: the most images per session run; larger batches are split (None: as many as fit).
        eigen_smooth: the map is the first principal component of the method's per-channel contributions
            (on the host) instead of their sum, as pytorch-grad-cam's ``eigen_smooth``.
        layout: the image input's layout, ``"NCHW"`` or ``"NHWC"`` (default: from the model's metadata, else
            guessed from where its 1 or 3 channels sit).
        precision: for float16 and bfloat16 models, ``"float32"`` (the default) recomputes the head, from the
            layers to the output, in float32 beside the model's own nodes and runs the backward pass over it:
            the gradients are float32, with no rounding of their own. ``"model"`` runs the backward pass in
            the model's own type (less memory; float16 gradients carry its rounding over every node of the
            head). float32 and float64 models are the same either way.
        on_nonfinite: images holding NaN or inf are an error (``"raise"``), or are left unexplained with a warning
            (``"warn"``): their maps are NaN and ``Explanation.nonfinite`` marks them.
        maps_on_device: ``cams`` and ``layer_cams`` are returned as ``onnxruntime.OrtValue`` where the session
            computed them (GPU memory under the CUDA provider, through ONNX Runtime's IO binding) for callers
            who post-process there: ``torch.from_dlpack(result.cams)`` (or CuPy's) takes them without a copy.
            Gradient methods, one target per image, no ``aug_smooth``, batches of at most ``max_batch``; images
            holding NaN or inf are refused.

    Maps are computed in float32 (float64 for float64 layers), whatever the model's float type.
    """

    def __init__(self, model: ModelLike, layer: Union[str, Sequence[str]] = "auto", method: str = "gradcam",
                 output: Output = None, providers: Providers = "auto",
                 session_options: Optional[Callable[[], object]] = None, tokens: Optional[TokenGrid] = None,
                 perturbations_per_run: int = 32, max_batch: Optional[int] = None, eigen_smooth: bool = False,
                 layout: Optional[str] = None, precision: str = "float32", on_nonfinite: str = "raise",
                 maps_on_device: bool = False):
        if session_options is not None and not callable(session_options):
            raise TypeError("session_options takes a function returning onnxruntime.SessionOptions (each "
                            "session needs options of its own), e.g. session_options=lambda: my_options()")
        self.method = check_method(method)  # fail now, not at the first call, on an unknown name
        if on_nonfinite not in NONFINITE:
            raise ValueError(f"on_nonfinite={on_nonfinite!r}: 'raise' (the default) or 'warn'")
        self.on_nonfinite = on_nonfinite
        self.eigen_smooth = eigen_smooth
        self.max_batch = max_batch
        light, detached = load_light(model)
        view = GraphView(normalize(light))
        self.metadata = metadata_schema.read(view.model)
        self.subject = resolve_subject(view, self.metadata, layer, output, tokens, layout, precision)
        self.sessions = SessionCache(model, detached, resolve_providers(providers), session_options or default_options)
        on_host = self.method in HOST_METHODS or eigen_smooth
        if maps_on_device and on_host:
            raise ValueError(f"maps_on_device: {self.method}{' with eigen_smooth' if eigen_smooth else ''} makes its "
                             f"maps on the host; on the device: {', '.join(GRADIENT_METHODS)}")
        self.maps_on_device = maps_on_device
        self.models = ExplainerModels(self.subject, None if self.method in HOST_METHODS else self.method,
                                      contributions_only=eigen_smooth, sessions=self.sessions)
        self._in_graph = InGraph(self.models, maps_on_device)
        self._way = OnHost(self.models, self.method, eigen_smooth, perturbations_per_run) if on_host else self._in_graph
        self._several = None if on_host else SeveralPerImage(self.subject, self.method, self.sessions)

    # --- what is explained ---------------------------------------------------------------------------------
    @property
    def output(self) -> str:
        """The name of the output explained (``result.outputs[explainer.output]``)."""
        return self.subject.output

    @property
    def layers(self) -> list[Layer]:
        """The layers explained at (``subject.keys`` names their results)."""
        return list(self.subject.layers)

    @property
    def runs(self) -> Counter:
        """Session runs so far, by kind: "explainer" (whole model), "body" and "head" (several targets,
        Ablation-CAM), "model" (Score-CAM), "maps" (host post-processing)."""
        return self.sessions.runs

    # --- explaining --------------------------------------------------------------------------------------
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
        Images holding NaN or inf are refused, or explained from a stand-in and blanked (``on_nonfinite``).
        """
        feeds = self._feeds(images)
        image = self.subject.image_input
        if self.maps_on_device and (aug_smooth or several_per_image(targets)):
            raise ValueError("maps_on_device returns the maps of one session run: aug_smooth and several targets "
                             "per image combine several runs on the host")
        nonfinite = nonfinite_rows(feeds[image], image, "raise" if self.maps_on_device else self.on_nonfinite)
        feeds = {**feeds, image: with_stand_ins(feeds[image], nonfinite)}
        if aug_smooth:
            return self._augmented(feeds, targets).blank(nonfinite)
        return self._chunked(self._explain, join, feeds, targets, self.max_batch).blank(nonfinite)

    def gradients(self, images: Images, targets: Targets = None) -> dict[str, LayerGradients]:
        """Per layer (keyed as given): its activations and d(target)/d(activations), as NumPy arrays.
        Batches are split as for :meth:`__call__`; images holding NaN or inf are refused, whatever
        ``on_nonfinite``."""
        def gradients(feeds: dict, chunk_targets: Targets) -> dict[str, LayerGradients]:
            return self._in_graph.gradients(feeds, self._target(chunk_targets, feeds))

        feeds = self._feeds(images)
        nonfinite_rows(feeds[self.subject.image_input], self.subject.image_input, "raise")
        return self._chunked(gradients, join_gradients, feeds, targets, self.max_batch)

    def _chunked(self, run: Callable, join_parts: Callable, feeds: dict, targets: Targets,
                 max_batch: Optional[int]):
        """``run`` on one batch, or on chunks of ``max_batch`` joined by ``join_parts``; a batch ONNX Runtime
        cannot allocate is halved, for this call only."""
        batch = len(feeds[self.subject.image_input])
        if batch <= (max_batch or batch):
            try:
                return run(feeds, targets)
            except Exception as error:  # noqa: BLE001  (only allocation failures are retried)
                if batch == 1 or not out_of_memory(error) or self.maps_on_device:
                    raise
                max_batch = batch // 2
        if self.maps_on_device:
            raise ValueError(f"maps_on_device returns the maps of one session run: give at most max_batch="
                             f"{max_batch} images per call, not {batch}")
        return join_parts([self._chunked(run, join_parts, rows(feeds, start, start + max_batch),
                                         target_rows(targets, start, start + max_batch, batch), max_batch)
                           for start in range(0, batch, max_batch)])

    def _explain(self, feeds: dict, targets: Targets) -> Explanation:
        if several_per_image(targets):
            if self._several is None:
                raise ValueError(f"{self.method}{' with eigen_smooth' if self.eigen_smooth else ''} takes one "
                                 "target per image")
            return self._several.explain(feeds, targets)
        return self._way.explain(feeds, self._target(targets, feeds))

    def _augmented(self, feeds: dict, targets: Targets) -> Explanation:
        """Mean over flips x brightness factors, each map flipped back (the un-augmented run gives outputs)."""
        width_axis = 3 if self.subject.image_layout == "NCHW" else 2
        runs = []
        for flip in (False, True):
            for factor in AUG_FACTORS:
                image = feeds[self.subject.image_input] * np.asarray(factor, feeds[self.subject.image_input].dtype)
                image = np.flip(image, width_axis) if flip else image
                result = self._chunked(self._explain, join, {**feeds, self.subject.image_input:
                                                             np.ascontiguousarray(image)}, targets, self.max_batch)
                if flip:
                    result.cams = np.flip(result.cams, -1)
                    result.raw = {key: np.flip(value, -1) for key, value in result.raw.items()}
                    result.layer_cams = {key: np.flip(value, -1) for key, value in result.layer_cams.items()}
                runs.append(result)
        plain = runs[AUG_FACTORS.index(1.0)]
        plain.cams = np.mean([r.cams for r in runs], axis=0).astype(plain.cams.dtype)
        plain.raw = {key: np.mean([r.raw[key] for r in runs], axis=0) for key in plain.raw}
        plain.layer_cams = {key: np.mean([r.layer_cams[key] for r in runs], axis=0).astype(plain.cams.dtype)
                            for key in plain.layer_cams}
        return plain

    def _target(self, targets: Targets, feeds: Mapping[str, np.ndarray]) -> TargetFeed:
        view, output = self.subject.view, self.subject.output
        dtype = onnx.helper.tensor_dtype_to_np_dtype(view.elem_type(output))
        return target_feed(targets, len(feeds[self.subject.image_input]), view.shape(output), dtype)

    def _feeds(self, images: Images) -> dict[str, np.ndarray]:
        return model_feeds(self.subject.view, images, self.subject.image_input, self.subject.image_layout)

    # --- models to save and deploy -----------------------------------------------------------------------
    def explainer_model(self, seeding: Seeding = Seeding.CLASS):
        """The ONNX model that computes outputs, gradients and maps, with the names of its parts."""
        return self.models.model(seeding)

    def save(self, path: str, seeding: Seeding = Seeding.CLASS) -> None:
        """Write the whole explainer model (activations, gradients, raw maps and ``cam``), weights included.

        To deploy, :meth:`export` writes the leaner model that computes only the original outputs and ``cam``.
        """
        self.sessions.write(self.explainer_model(seeding).model, path)

    def export(self, path: str, targets: str = "top") -> None:
        """Write a standalone ONNX model for deployment: the original inputs, the original outputs plus ``cam``
        ((N, H, W) float in [0, 1], at the image's size), for any batch size the model takes.

        ``targets``: ``"top"`` explains each image's top class; ``"input"`` adds an int64 input
        ``target_class`` (N,) with the class to explain per image (-1: the top class); ``"seed"`` adds a float
        input ``target_seed`` shaped like the output (the score is sum(seed * output): segmentation masks,
        detections, any dense output). It runs on a stock
        ONNX Runtime (no custom ops), without this package or a training framework. Gradient methods only:
        the others need the host between model runs.
        """
        self.write(self.exported_model(targets), path)

    def exported_model(self, targets: str = "top") -> onnx.ModelProto:
        """The model :meth:`export` writes, with its large weights left out (placeholders): its graph, inputs,
        outputs and metadata."""
        if targets not in EXPORT_TARGETS:
            raise ValueError(f"targets={targets!r}: use 'top' (each image's top class), 'input' (a "
                             "target_class input) or 'seed' (a target_seed input shaped like the output)")
        if self._way is not self._in_graph:
            raise ValueError(f"{self.method}{' with eigen_smooth' if self.eigen_smooth else ''} needs work on the "
                             "host between model runs and cannot be exported as one ONNX model; exportable methods: "
                             f"{', '.join(GRADIENT_METHODS)}")
        model = deployable_model(self.explainer_model(EXPORT_TARGETS[targets]))
        meta = metadata_schema.read(model)
        meta.explainer = {"method": self.method, "layers": list(self.subject.keys), "output": self.subject.output,
                          "targets": targets}
        metadata_schema.write(model, meta)
        return model

    def write(self, model: onnx.ModelProto, path: str) -> None:
        """Save a model built from this explainer's (:meth:`explainer_model`, :meth:`exported_model`) with the
        weights put back."""
        self.sessions.write(model, path)
