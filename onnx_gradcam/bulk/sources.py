"""What a bulk run reads, as a Ray Dataset of encoded images with two columns, ``path`` and ``bytes``.

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
2 cores), read tasks asking for one would never be scheduled and the run would hang (measured on Ray 2.60)."""


def is_parquet(inputs: Sequence[str]) -> bool:
    """Whether every input names a Parquet file (``.parquet``); a folder of Parquet files needs ``format``."""
    return all(path.lower().endswith(".parquet") for path in inputs)


def encoded_images(source: Union[str, Sequence[str], object], form: str, image_column: str, path_column: str):
    """The inputs as a Dataset of ``path`` and ``bytes``. ``form``: ``images`` (files and folders, image files
    only: those ending in an image suffix), ``parquet`` or ``dataset`` (a ``ray.data.Dataset`` given)."""
    if form == "images":
        extensions = [suffix.lstrip(".") for suffix in IMAGE_SUFFIXES]
        dataset = ray.data.read_binary_files(list(source), include_paths=True, file_extensions=extensions,
                                             num_cpus=READ_CPUS)
        image_column, path_column = "bytes", "path"
    elif form == "parquet":
        dataset = ray.data.read_parquet(list(source), columns=[image_column, path_column], num_cpus=READ_CPUS)
    else:
        dataset = source
    missing = [name for name in (image_column, path_column) if name not in (dataset.columns() or [])]
    if missing:
        raise ValueError(f"the {form} input has no column {' or '.join(map(repr, missing))} (columns: "
                         f"{', '.join(dataset.columns() or [])}): name its encoded-image and path columns with "
                         "image_column= and path_column=")
    dataset = dataset.select_columns([path_column, image_column])
    renames = {old: new for old, new in ((path_column, "path"), (image_column, "bytes")) if old != new}
    return dataset.rename_columns(renames) if renames else dataset
