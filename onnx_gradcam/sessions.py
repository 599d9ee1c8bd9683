"""The ONNX Runtime sessions of one Explainer, and the weights they are made from.

The weights of the user's model are detached once into a private file (see :mod:`onnx_gradcam.graph.weights`)
that every session ONNX Runtime makes maps in, so no copy of ours lives beside ONNX Runtime's. Sessions are
kept under typed keys: what the session computes, and which part.
"""

from __future__ import annotations

import enum
import os
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Hashable, Mapping, Sequence

import numpy as np
import onnx

from .graph import weights
from .graph.model import ModelLike, load_model
from .graph.saving import save_model
from .runtime import CUDA, has_float16_weights, make_session
from .writing import atomic, refuse_inputs


class Kind(enum.Enum):
    """What a session computes; its runs are counted under the kind's value."""

    EXPLAINER = "explainer"
    """The whole explainer model: outputs, gradients, maps."""
    MODEL = "model"
    """The model restricted to the explained output (Score-CAM's masked inputs)."""
    BODY = "body"
    """The model up to the tensors a cut-out head reads."""
    HEAD = "head"
    """A cut-out head: bare (Ablation-CAM) or with its backward pass and maps (several targets)."""
    MAPS = "maps"
    """Post-processing of maps computed on the host."""


@dataclass(frozen=True)
class SessionKey:
    kind: Kind
    part: Hashable = None
    """Which one of its kind: a seeding, a layer, the layers of a head, a number of maps."""


def bound_run(session, names: Sequence[str], feeds: Mapping[str, np.ndarray], on_device: Sequence[str]) -> dict:
    """One run through ONNX Runtime's IO binding: every output ``names`` is allocated on the session's device,
    and only those not ``on_device`` are copied to the host."""
    binding = session.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    device = "cuda" if session.get_providers()[0] == CUDA else "cpu"
    for name in names:
        binding.bind_output(name, device)
    session.run_with_iobinding(binding)
    return {name: value if name in on_device else value.numpy()
            for name, value in zip(names, binding.get_outputs())}


def load_light(model: ModelLike) -> tuple[onnx.ModelProto, weights.DetachedWeights]:
    """A private copy of ``model`` whose large weights are detached into a file of their own."""
    light = load_model(model)
    weights.constants_to_initializers(light)
    return light, weights.DetachedWeights(light)


class SessionCache:
    """Makes each session once, from models whose large weights are placeholders, and counts their runs."""

    def __init__(self, source: ModelLike, detached: weights.DetachedWeights, providers: Sequence[str],
                 new_options: Callable[[], object]):
        self._source = source
        self._detached = detached
        self._providers = list(providers)
        self._new_options = new_options
        self._sessions: dict[SessionKey, object] = {}
        self.runs: Counter = Counter()
        """Session runs so far, by :class:`Kind` value."""

    def session(self, key: SessionKey, model: Callable[[], onnx.ModelProto]):
        """The session for ``key``, made from ``model()`` the first time."""
        if key not in self._sessions:
            self._sessions[key] = self._make(model())
        return self._sessions[key]

    def run(self, key: SessionKey, model: Callable[[], onnx.ModelProto], names: Sequence[str],
            feeds: Mapping[str, np.ndarray], on_device: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Run the session for ``key`` once; the outputs ``names`` by name, as NumPy arrays except those
        ``on_device``: ``onnxruntime.OrtValue`` on the session's device (CUDA memory under the CUDA provider),
        which torch and CuPy take without a copy (DLPack)."""
        session = self.session(key, model)
        if on_device:
            values = bound_run(session, names, feeds, on_device)
        else:
            values = dict(zip(names, session.run(list(names), dict(feeds))))
        self.runs[key.kind.value] += 1
        return values

    def write(self, model: onnx.ModelProto, path: str) -> None:
        """Save a model built over the placeholders with the weights put back (external data only past
        protobuf's 2 GiB limit). Never over the model it came from; atomically, so an interrupted write leaves
        no half-written model under ``path``."""
        if isinstance(self._source, (str, os.PathLike)):
            refuse_inputs(os.fspath(path), [os.fspath(self._source)], "model to write")
        complete = onnx.ModelProto()
        complete.CopyFrom(model)
        self._detached.attach(complete)
        with atomic(os.fspath(path)) as staged:
            save_model(complete, staged)

    def _make(self, model: onnx.ModelProto):
        """A session over ``model``, from a file that reads the detached weights where it has placeholders."""
        source = self._detached.session_file(model) if weights.placeholders(model) else model
        return make_session(source, self._providers, self._new_options(), has_float16_weights(model))
