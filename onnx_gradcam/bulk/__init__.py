"""Bulk explanation on Ray Data (``pip install onnx-gradcam[ray]``): one pipeline that reads images (folders,
files, Parquet of encoded images, or a Dataset), explains them in an actor pool with one Explainer per actor,
and writes maps and a summary as Parquet (overlays as PNG files when asked). The same call runs on a local
Ray instance and on a multi-node cluster: only where ``ray.init`` connects changes.

Output: ``OUTPUT/maps/`` (path, map as a float32 list, shape), ``OUTPUT/summary/`` (one row per input: path,
status, reason, predicted class, its score, explained class; rows in no set order, as batches finish),
``OUTPUT/overlays/<name>_cam.png``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

try:
    import pyarrow.parquet as pq
    import ray
    import ray.data
except ImportError:
    raise ImportError("bulk explanation runs on Ray Data, which is not installed: pip install onnx-gradcam[ray]"
                      ) from None

from ..explainer import Explainer
from ..files import chosen_preprocessing
from ..graph.model import ModelLike
from ..images import Preprocessing
from . import store
from .actor import ExplainActor
from .sources import encoded_images, is_parquet

FORMATS = ("images", "parquet")


@dataclass
class BulkSummary:
    """What a bulk run did: counts by status, where it wrote, and how long it took (``seconds``, from the
    pipeline's start to the summary written, Ray's start-up excluded)."""

    output: str
    images: int
    explained: int
    failed: int
    seconds: float
    actors: int
    method: str
    layers: list[str] = field(default_factory=list)
    overlays: Optional[str] = None

    @property
    def maps(self) -> str:
        return f"{self.output}/{store.MAPS}"

    @property
    def summary(self) -> str:
        return f"{self.output}/{store.SUMMARY}"

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return (f"{self.explained} of {self.images} images explained ({self.failed} failed) by {self.actors} "
                f"actor(s) in {self.seconds:.1f} s ({self.images_per_second:.1f} images/s); maps in {self.maps}, "
                f"summary in {self.summary}" + (f", overlays in {self.overlays}" if self.overlays else ""))


def explain_dataset(dataset_or_path, model: ModelLike, output: str, layer: Union[str, Sequence[str]] = "auto",
                    method: str = "gradcam", targets: Optional[int] = None, actors: int = 1, batch_size: int = 16,
                    num_cpus: float = 1, num_gpus: float = 0, overlays: bool = False, format: Optional[str] = None,
                    image_column: str = "image", path_column: str = "path",
                    preprocessing: Union[Preprocessing, dict, None] = None, alpha: float = 0.5, colormap: str = "jet",
                    address: Optional[str] = None) -> BulkSummary:
    """Explain every image of ``dataset_or_path`` on Ray; a :class:`BulkSummary` of the run.

    ``dataset_or_path``: a folder, an image file, a list of these (any filesystem Ray reads: local, ``s3://``),
    Parquet files of encoded images (``format="parquet"``, implied when every path ends in ``.parquet``;
    columns ``image_column`` and ``path_column``), or a ``ray.data.Dataset`` with those two columns.
    ``model``: a path (on a cluster, one every node can read) or the model's bytes. ``targets``: None (each
    image's top class) or one class index for all. ``actors``: the pool's size, each actor holding one
    Explainer with ``num_cpus`` CPUs (its ONNX Runtime threads) and ``num_gpus`` GPUs (1: CUDA when the node
    has it). ``batch_size``: images per actor call. ``preprocessing``: a ``Preprocessing``, or the model's own
    (metadata and input shape) with the overrides a dict holds. ``address``: where ``ray.init`` connects when
    Ray is not started yet (None: a local instance, ``"auto"`` or ``"ray://head:10001"``: a cluster); a running
    Ray is used as it is.

    An image that cannot be decoded or explained is a ``failed`` row with its reason; the rest go on.
    """
    if batch_size < 1 or actors < 1:
        raise ValueError(f"batch size {batch_size} and {actors} actor(s): each must be at least 1")
    if isinstance(dataset_or_path, ray.data.Dataset):
        form, inputs = "dataset", []
    else:
        single = isinstance(dataset_or_path, (str, os.PathLike))
        # absolute, as workers run in other folders; the summary's paths are then as Ray reports them
        inputs = [store.absolute(os.fspath(path)) for path in ([dataset_or_path] if single else dataset_or_path)]
        if not inputs:
            raise ValueError("no input given: name a folder, image files or Parquet files, or pass a Dataset")
        form = format or ("parquet" if is_parquet(inputs) else "images")
        if form not in FORMATS:
            raise ValueError(f"format {format!r}: use {' or '.join(FORMATS)} (a Dataset is recognised by itself)")
    explainer = Explainer(model, layer, method)  # refuses a bad model, layer or method before Ray starts
    preprocessing = chosen_preprocessing(explainer, preprocessing)
    missing = [path for path in inputs if "://" not in path and not os.path.exists(path)]
    if missing:
        raise FileNotFoundError(f"no image, folder or Parquet file at {', '.join(map(repr, missing))}")
    if not ray.is_initialized():
        ray.init(address=address)
    started = time.perf_counter()
    dataset, image_column, path_column = encoded_images(dataset_or_path if form == "dataset" else inputs, form,
                                                        image_column, path_column, readers=actors)
    output = store.absolute(output)
    store.prepare(output, inputs)  # once the inputs are found: a run that cannot start leaves no folder
    constructor = dict(model=model, layer=layer, method=method, preprocessing=preprocessing, output=output,
                       targets=targets, threads=max(1, int(num_cpus)), overlays=overlays,
                       root=store.common_root(inputs) if form == "images" else None, alpha=alpha, colormap=colormap,
                       image_column=image_column, path_column=path_column)
    summary = dataset.map_batches(ExplainActor, fn_constructor_kwargs=constructor, batch_size=batch_size,
                                  batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=actors),
                                  num_cpus=num_cpus, num_gpus=num_gpus)
    summary.write_parquet(f"{output}/{store.SUMMARY}", ray_remote_args={"num_cpus": 0}, concurrency=1)
    statuses = Counter(read_summary(output).column("status").to_pylist())
    return BulkSummary(output, statuses.total(), statuses["explained"], statuses["failed"],
                       time.perf_counter() - started, actors, explainer.method, list(explainer.subject.keys),
                       f"{output}/{store.OVERLAYS}" if overlays else None)


def read_summary(output: str):
    """The summary a run wrote into ``output``, as one ``pyarrow.Table``."""
    fs, root = store.filesystem(store.absolute(output))
    return pq.read_table(f"{root}/{store.SUMMARY}", filesystem=fs)


def read_maps(output: str) -> dict[str, np.ndarray]:
    """The maps a run wrote into ``output``, by input path: (H, W) float32 arrays."""
    fs, root = store.filesystem(store.absolute(output))
    table = pq.read_table(f"{root}/{store.MAPS}", filesystem=fs)
    return {path: np.asarray(values, np.float32).reshape(shape) for path, values, shape in
            zip(*(table.column(name).to_pylist() for name in ("path", "map", "shape")))}


__all__ = ["BulkSummary", "ExplainActor", "explain_dataset", "read_maps", "read_summary"]
