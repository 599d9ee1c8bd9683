"""Where a bulk run writes: an output folder on any filesystem pyarrow reaches (a local path, or ``s3://``,
``gs://``, ... that every node of a cluster can reach), its ``maps/``, ``summary/`` and ``overlays/`` folders,
and the names outputs take. Every node resolves the folder itself, so only its address travels to the actors.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from typing import Optional, Sequence

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..writing import inside

MAPS, SUMMARY, OVERLAYS = "maps", "summary", "overlays"
_STAGING = ".onnx-gradcam-"


def absolute(address: str) -> str:
    """A local path made absolute (actors run in other working folders); a URI (``s3://...``) as it is."""
    return address if "://" in address else os.path.abspath(address)


def filesystem(address: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``address`` (absolute, see :func:`absolute`) and the path on it."""
    return pafs.FileSystem.from_uri(address)


def prepare(output: str, inputs: Sequence[str]) -> None:
    """Make ``output`` a folder to write into: refused where it lies inside an input folder (Ray reads folders
    recursively, so the next run would read these outputs as images) or already holds an earlier run's
    ``maps/`` or ``summary/`` (a Parquet folder is read whole: old and new files would be read as one)."""
    for source in inputs:
        if "://" not in source and os.path.isdir(source) and inside(output, source):
            raise ValueError(f"output {output!r} lies inside the input folder {source!r}: its maps and "
                             "overlays would be read as images next time; write somewhere else")
    fs, root = filesystem(output)
    for folder in (MAPS, SUMMARY):
        info = fs.get_file_info(pafs.FileSelector(posixpath.join(root, folder), allow_not_found=True))
        if info:
            raise ValueError(f"{posixpath.join(output, folder)!r} holds an earlier run's files: remove it or "
                             "write to another output folder")
    fs.create_dir(root, recursive=True)


def output_name(path: str, root: Optional[str]) -> str:
    """An input's name in the output: its path below ``root`` (the folder common to the inputs given), else
    its whole path, without scheme, leading slashes or ``..`` (so no output lands outside the folder)."""
    path, root = _plain(path), _plain(root) if root else None
    if root and path.startswith(root.rstrip("/") + "/"):
        path = path[len(root.rstrip("/")) + 1:]
    return "/".join(part for part in path.split("/") if part not in ("", ".", ".."))


def common_root(inputs: Sequence[str]) -> Optional[str]:
    """The deepest folder holding every input given (folders as they are, files by their folder), as Ray's
    readers spell paths (no scheme), for :func:`output_name`; None where they share none."""
    folders = []
    for source in inputs:
        fs, path = filesystem(absolute(source))
        folders.append(path if fs.get_file_info(path).type == pafs.FileType.Directory else posixpath.dirname(path))
    try:
        return posixpath.commonpath(folders) or None
    except ValueError:  # nothing given, or paths of different kinds
        return None


def write_file(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` under a hidden staging name, then move it to ``path``: no half-written file is ever seen
    under the final name (a Parquet reader of the folder skips hidden files)."""
    folder = posixpath.dirname(path)
    fs.create_dir(folder, recursive=True)
    staged = posixpath.join(folder, f"{_STAGING}{uuid.uuid4().hex}-{posixpath.basename(path)}")
    with fs.open_output_stream(staged) as stream:
        stream.write(data)
    fs.move(staged, path)


def write_table(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """One Parquet file, written as :func:`write_file` writes."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_file(fs, path, sink.getvalue().to_pybytes())


def _plain(path: str) -> str:
    """A path without its URI scheme, as Ray's readers report paths (``s3://b/k`` -> ``b/k``)."""
    return path.split("://", 1)[1] if "://" in path else path
