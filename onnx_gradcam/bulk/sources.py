"""What a bulk run reads, as a Ray Dataset of encoded images: a column of a file's bytes, one of its path.

Folders and files are read with ``ray.data.read_binary_files``, not ``read_images``: a corrupt file is then one
more row, decoded (and reported as failed) by the actor, where an image reader would fail the whole run.
Parquet of encoded images is read with ``ray.data.read_parquet``; a Dataset is taken as it is. Ray's readers
reach any filesystem pyarrow does (local, ``s3://``, ``gs://``), on every node of a cluster.
"""

from __future__ import annotations

from typing import Sequence, Union

import ray.data

from ..files import IMAGE_SUFFIXES

READ_CPUS = 0
"""CPUs a read task asks for. Reading bytes is I/O; with the actor pool holding every CPU (2 actors of 1 CPU on
2 cores), read tasks asking for one would never be scheduled and the run would hang (measured on Ray 2.60).
Tasks asking for none are not limited by CPUs at all, so their number is: one at a time per actor (without
it Ray started a worker process per file, and 256 files took 5 times as long)."""


def is_parquet(inputs: Sequence[str]) -> bool:
    """Whether every input names a Parquet file (``.parquet``); a folder of Parquet files needs ``format``."""
    return all(path.lower().endswith(".parquet") for path in inputs)


def encoded_images(source: Union[str, Sequence[str], object], form: str, image_column: str,
                   path_column: str, readers: int) -> tuple[object, str, str]:
    """The inputs as a Dataset, and the names of its encoded-image and path columns. ``form``: ``images``
    (files and folders, image files only: those ending in an image suffix), ``parquet`` or ``dataset`` (a
    ``ray.data.Dataset`` given). ``readers``: read tasks at a time.

    Columns are not renamed, but read by name in the actor: a rename is one more task stage, not fused into an
    actor pool asking for other CPUs, and with the actors holding every CPU it would never run (measured on
    Ray 2.60: 1 actor of 2 CPUs on 2 cores hung). A Dataset's own stages need CPUs the actors leave free.
    """
    if form == "images":
        extensions = [suffix.lstrip(".") for suffix in IMAGE_SUFFIXES]
        return (ray.data.read_binary_files(list(source), include_paths=True, file_extensions=extensions,
                                           num_cpus=READ_CPUS, concurrency=readers), "bytes", "path")
    dataset = source if form == "dataset" else _read_parquet(list(source), readers)
    missing = [name for name in (image_column, path_column) if name not in (dataset.columns() or [])]
    if missing:
        raise ValueError(f"the {form} input has no column {' or '.join(map(repr, missing))} (columns: "
                         f"{', '.join(dataset.columns() or [])}): name its encoded-image and path columns with "
                         "image_column= and path_column=")
    if form == "parquet":  # Ray reads these columns only: the select is pushed into the Parquet reader
        dataset = dataset.select_columns([image_column, path_column])
    return dataset, image_column, path_column


def _read_parquet(paths: list[str], readers: int):
    """``ray.data.read_parquet`` through Ray's first Parquet datasource: the second (Ray 2.60's default) lists
    files in a stage of its own that always asks for 1 CPU, which never runs while the actors hold every CPU
    (measured: 1 actor of 2 CPUs on 2 cores hung); the first lists them on the driver."""
    context = ray.data.DataContext.get_current()
    second, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return ray.data.read_parquet(paths, num_cpus=READ_CPUS, concurrency=readers)
    finally:
        context.use_datasource_v2 = second
