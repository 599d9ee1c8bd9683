"""The actor of a bulk run: one :class:`~onnx_gradcam.Explainer` per actor, built in its constructor (its ONNX
Runtime sessions cannot be pickled, and building them once per batch would cost more than the batch), fed
batches of encoded images. Each batch is decoded and preprocessed here, explained in groups of one size, its
maps (and overlays) written by the actor straight to the output, and its summary rows returned: maps never go
back through Ray's object store, and the Dataset that flows on is the small summary alone.
"""

from __future__ import annotations

import io
import posixpath
import uuid
from typing import Optional

import numpy as np
import onnxruntime as ort
import pyarrow as pa
from PIL import Image

from ..explainer import Explainer
from ..files import score_kind
from ..graph.model import ModelLike
from ..images import Preprocessing, display_rgb, load_picture
from ..pictures import overlay_pixels
from ..pipeline import session_options
from ..png import write_png
from . import store

MAP_SCHEMA = pa.schema([("path", pa.string()), ("map", pa.list_(pa.float32())), ("shape", pa.list_(pa.int32()))])
"""Maps as lists of float32 with their (H, W) shape: exactly the Explainer's values (a float64 layer's maps are
rounded to float32), readable by any Parquet reader."""


def map_table(maps: list[tuple[str, np.ndarray]]) -> pa.Table:
    """The (path, map) pairs as a table of :data:`MAP_SCHEMA`, the values copied once, not row by row."""
    flat = [np.asarray(cam, np.float32).reshape(-1) for _, cam in maps]
    offsets = np.concatenate([[0], np.cumsum([len(values) for values in flat])]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(flat)))
    shapes = pa.array([list(cam.shape) for _, cam in maps], pa.list_(pa.int32()))
    return pa.Table.from_arrays([pa.array([path for path, _ in maps], pa.string()), lists, shapes], schema=MAP_SCHEMA)


def summary_schema(kind: str, overlays: bool) -> pa.Schema:
    """One row per input; the score's column is named for what the output holds (``predicted_logit`` or
    ``predicted_probability``), as in the ``explain`` command's summary."""
    fields = [("path", pa.string()), ("status", pa.string()), ("reason", pa.string()),
              ("predicted_class", pa.int64()), (f"predicted_{kind}", pa.float64()), ("explained_class", pa.int64())]
    return pa.schema(fields + ([("overlay", pa.string())] if overlays else []))


class ExplainActor:
    """Explains batches (``pyarrow.Table`` with encoded images in ``image_column``, their paths in
    ``path_column``) for ``map_batches``; returns their summary rows. ``threads``: ONNX Runtime's intra-op
    threads, the CPUs the actor was given; threads do not spin between runs, as the node's cores are shared
    with the other actors and the readers."""

    def __init__(self, model: ModelLike, layer, method: str, preprocessing: Preprocessing, output: str,
                 targets: Optional[int] = None, threads: int = 1, overlays: bool = False,
                 root: Optional[str] = None, alpha: float = 0.5, colormap: str = "jet", image_column: str = "bytes",
                 path_column: str = "path"):
        def options() -> ort.SessionOptions:
            chosen = session_options()
            chosen.intra_op_num_threads = threads
            return chosen

        self.explainer = Explainer(model, layer, method, session_options=options)
        self.preprocessing, self.targets, self.overlays, self.root = preprocessing, targets, overlays, root
        self.alpha, self.colormap, self.columns = alpha, colormap, (path_column, image_column)
        self.output = output
        self.fs, self.folder = store.filesystem(output)
        kind = score_kind(self.explainer)
        self.schema, self.score_column = summary_schema(kind, overlays), f"predicted_{kind}"
        self.name = uuid.uuid4().hex
        self.batches = 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        paths, data = (batch.column(name).to_pylist() for name in self.columns)
        rows: list[dict] = [{"path": path, "status": "failed"} for path in paths]
        groups: dict[tuple, list[tuple[int, Image.Image, np.ndarray]]] = {}
        for index, (path, encoded) in enumerate(zip(paths, data)):
            try:
                picture = load_picture(path, encoded)
                pixels = self.preprocessing(picture)
            except ValueError as error:
                rows[index]["reason"] = str(error)
                continue
            groups.setdefault(pixels.shape, []).append((index, picture, pixels))
        maps: list[tuple[str, np.ndarray]] = []
        for group in groups.values():
            self._explain(group, rows, maps)
        if maps:
            self.batches += 1
            store.write_table(self.fs, posixpath.join(self.folder, store.MAPS, f"{self.name}-{self.batches}.parquet"),
                              map_table(maps))
        return pa.Table.from_pylist(rows, self.schema)

    def _explain(self, group: list, rows: list[dict], maps: list) -> None:
        """Explain pictures of one size as one batch; if the batch is refused (ValueError: non-finite pixels,
        a target out of range), one by one, so only the bad ones fail."""
        try:
            result = self.explainer(np.stack([pixels for _, _, pixels in group]), self.targets)
        except ValueError as error:
            if len(group) == 1:
                rows[group[0][0]]["reason"] = str(error)
                return
            for item in group:
                self._explain([item], rows, maps)
            return
        scores = result.outputs[self.explainer.output]
        for row, (index, picture, _) in enumerate(group):
            cam, path = result.cams[row], rows[index]["path"]
            values = scores[row].reshape(-1) if scores.ndim == 2 else None
            rows[index].update(status="explained", predicted_class=None if values is None else int(values.argmax()),
                               explained_class=None if result.classes is None else int(result.classes[row]),
                               **{self.score_column: None if values is None else float(values.max())})
            maps.append((path, cam))
            if self.overlays:
                rows[index]["overlay"] = self._overlay(path, picture, cam)

    def _overlay(self, path: str, picture: Image.Image, cam: np.ndarray) -> str:
        """The overlay at the picture's own size, as a PNG file named after the input."""
        name = posixpath.join(store.OVERLAYS, store.output_name(path, self.root) + "_cam.png")
        encoded = io.BytesIO()
        write_png(encoded, overlay_pixels(display_rgb(picture, None), cam, self.alpha, self.colormap))
        store.write_file(self.fs, posixpath.join(self.folder, name), encoded.getvalue())
        return posixpath.join(self.output, name)
