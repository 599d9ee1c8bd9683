"""Ground truth for the localisation scores: where each image's object is, as an (H, W) bool mask.

It comes as boxes (x0, y0, x1, y1) in pixels, x0 and y0 inclusive, x1 and y1 exclusive (as
``examples/shapes.py`` makes them), or as masks. For images given as files, :class:`GroundTruth` reads a
boxes file (CSV or JSON) or a folder of mask images and finds each image's entry by its path, base name or
stem; for images given as arrays, it takes the masks or boxes in the images' order. Every mask handed out
is checked against the image's size and must hold an object and some background, so a score is never
computed against ground truth that does not fit the image.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Mapping, Optional, Sequence, Union

import numpy as np

BOXES_HEADER = ("image", "x0", "y0", "x1", "y1")


class GroundTruthError(ValueError):
    """Ground truth that is malformed, ambiguous or does not fit its image."""


def boxes_to_mask(boxes, size: tuple[int, int], name: str = "boxes") -> np.ndarray:
    """The (H, W) bool union of ``boxes`` ((K, 4) or one (4,) box, x0 y0 x1 y1), ``size`` = (H, W).

    A pixel belongs to a box when its centre (column + 0.5, row + 0.5) lies in [x0, x1) x [y0, y1): for
    integer coordinates that is exactly columns x0..x1-1 and rows y0..y1-1, and fractional coordinates
    round the way a rasteriser does. A box that is empty, reaches outside the image or covers no pixel
    centre raises: it would silently score the wrong region. ``name`` says whose boxes, in messages.
    """
    height, width = size
    boxes = np.asarray(boxes, np.float64)
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) == 0:
        raise GroundTruthError(f"{name}: boxes must be (K, 4) as x0 y0 x1 y1 with K >= 1, got shape {boxes.shape}")
    mask = np.zeros((height, width), bool)
    for box in boxes:
        if (box < 0).any() or box[2] > width or box[3] > height:
            raise GroundTruthError(f"{name}: box {_show(box)} reaches outside the {height}x{width} (H x W) image; "
                                   f"boxes are x0 y0 x1 y1 in pixels with 0 <= x0 < x1 <= {width} "
                                   f"and 0 <= y0 < y1 <= {height}")
        x0, y0, x1, y1 = _checked_box(box, name)
        columns = slice(math.ceil(x0 - 0.5), math.ceil(x1 - 0.5))
        rows = slice(math.ceil(y0 - 0.5), math.ceil(y1 - 0.5))
        if columns.start == columns.stop or rows.start == rows.stop:
            raise GroundTruthError(f"{name}: box {_show(box)} covers no pixel centre of the {height}x{width} image")
        mask[rows, columns] = True
    return mask


def _checked_box(box, where: str) -> tuple[float, float, float, float]:
    """The box's coordinates, refused when not finite, negative or empty (x1 <= x0 or y1 <= y0)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) and v >= 0 for v in (x0, y0, x1, y1)):
        raise GroundTruthError(f"{where}: box {_show(box)} has a negative or non-finite coordinate; "
                               "boxes are x0 y0 x1 y1 in pixels, all >= 0")
    if x1 <= x0 or y1 <= y0:
        raise GroundTruthError(f"{where}: box {_show(box)} is empty; boxes are x0 y0 x1 y1 with x1 > x0 and y1 > y0")
    return x0, y0, x1, y1


def _show(box) -> str:
    return "(" + ", ".join(f"{float(v):g}" for v in box) + ")"


def check_mask(mask, size: tuple[int, int], name: str) -> np.ndarray:
    """``mask`` as an (H, W) bool array, refused unless it fits an image of ``size`` = (H, W).

    Any value > 0 is the object: bool, 0/1 and 0/255 masks all mean what they say, and a soft or labelled
    mask (several class values) counts all its nonzero pixels. A mask with no object pixel, or with nothing
    but object, raises: neither can tell a good map from a bad one.
    """
    mask = np.asarray(mask)
    height, width = size
    if mask.ndim != 2:
        raise GroundTruthError(f"{name}: a mask must be (H, W), got shape {mask.shape}")
    if mask.shape != (height, width):
        raise GroundTruthError(f"{name}: the mask is {mask.shape[0]}x{mask.shape[1]} (H x W) but the image is "
                               f"{height}x{width}; resize the mask to the image (nearest neighbour) or give boxes")
    if mask.dtype != bool:
        if not np.isfinite(mask).all():
            raise GroundTruthError(f"{name}: the mask has non-finite values; object pixels are > 0")
        mask = mask > 0
    if not mask.any():
        raise GroundTruthError(f"{name}: the mask has no object pixel (every value is 0)")
    if mask.all():
        raise GroundTruthError(f"{name}: the mask covers the whole image; it needs background pixels too")
    return mask


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays field by field has no single truth value
class _Entry:
    """One image's ground truth: boxes (K, 4), or a mask array, or a mask file read when asked for."""

    name: str
    boxes: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    path: Optional[Path] = None

    @classmethod
    def of_boxes(cls, name: str, boxes) -> _Entry:
        """Boxes (K, 4) checked now, so a malformed one is named when the ground truth is read; whether they
        fit the image is checked when its size is known."""
        array = np.asarray(boxes, np.float64)
        if array.ndim != 2 or array.shape[1] != 4 or len(array) == 0:
            raise GroundTruthError(f"{name}: boxes must be a non-empty list of [x0, y0, x1, y1], got shape "
                                   f"{array.shape} (masks go in one (N, H, W) array)")
        for box in array:
            _checked_box(box, name)
        return cls(name, boxes=array)

    def mask_at(self, size: tuple[int, int]) -> np.ndarray:
        if self.boxes is not None:
            return check_mask(boxes_to_mask(self.boxes, size, self.name), size, self.name)
        if self.path is not None:
            return check_mask(_read_mask(self.path), size, self.name)
        return check_mask(self.mask, size, self.name)


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("L"))


@dataclass(frozen=True)
class GroundTruth:
    """Where the ground truth of a set of images comes from: by key (images given as files, see
    :meth:`mask_for`) or by index (images given as arrays, see :meth:`mask_for_index`)."""

    source: str
    by_key: Mapping[str, _Entry]
    by_index: Sequence[_Entry] = ()

    @classmethod
    def from_boxes_file(cls, path: Union[str, Path]) -> GroundTruth:
        """Boxes from a CSV with header ``image,x0,y0,x1,y1`` (one box a row, an image's rows united) or a JSON
        object ``{"image": [[x0, y0, x1, y1], ...]}``, told apart by the extension."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".csv":
            boxes = _read_boxes_csv(path)
        elif suffix == ".json":
            boxes = _read_boxes_json(path)
        else:
            raise GroundTruthError(f"{path}: a boxes file must be .csv (header {','.join(BOXES_HEADER)}) or .json "
                                   f"({{\"image\": [[x0, y0, x1, y1], ...]}}), got {suffix or 'no extension'}")
        if not boxes:
            raise GroundTruthError(f"{path}: no boxes in the file")
        entries = {key: _Entry(f"{key!r} in {path}", boxes=np.array(rows)) for key, rows in boxes.items()}
        return cls(str(path), entries)

    @classmethod
    def from_masks_folder(cls, folder: Union[str, Path]) -> GroundTruth:
        """One mask image per image, named with the image's stem (any extension Pillow reads: png, bmp,
        tif, ...), read as gray with nonzero = object. Files are read when their image is asked for."""
        from PIL import Image

        folder = Path(folder)
        if not folder.is_dir():
            raise GroundTruthError(f"{folder}: the masks folder does not exist or is not a folder")
        readable = {extension for extension, kind in Image.registered_extensions().items() if kind in Image.OPEN}
        entries: dict[str, _Entry] = {}  # by the mask's file name, so that a stem with dots stays whole
        by_stem: dict[str, str] = {}
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.suffix.lower() not in readable:
                continue
            if path.stem in by_stem:
                raise GroundTruthError(f"{folder}: two masks for the image {path.stem!r}: "
                                       f"{by_stem[path.stem]} and {path.name}")
            by_stem[path.stem] = path.name
            entries[path.name] = _Entry(str(path), path=path)
        if not entries:
            raise GroundTruthError(f"{folder}: no mask images in the folder")
        return cls(str(folder), entries)

    @classmethod
    def from_arrays(cls, masks_or_boxes) -> GroundTruth:
        """Ground truth for images given as arrays, in their order: masks (N, H, W) (any value > 0 is the
        object), boxes (N, 4) (one per image), or a list per image of its boxes (each (K, 4)). A 3-D array is
        always read as masks; boxes several to an image come as a list."""
        given = masks_or_boxes
        if isinstance(given, np.ndarray) and given.ndim == 2 and given.shape[1] == 4:
            given = list(given[:, None])  # one box per image
        if isinstance(given, np.ndarray) and given.ndim == 3:
            entries = [_Entry(f"ground truth of image {i}", mask=mask) for i, mask in enumerate(given)]
        elif isinstance(given, (list, tuple)):
            entries = [_Entry.of_boxes(f"ground truth of image {i}", boxes) for i, boxes in enumerate(given)]
        else:
            raise GroundTruthError(f"ground truth arrays must be masks (N, H, W), boxes (N, 4) or a list per image of "
                                   f"(K, 4) boxes, got {type(given).__name__} of shape {getattr(given, 'shape', '?')}")
        if not entries:
            raise GroundTruthError("ground truth arrays hold no image")
        return cls("arrays", {}, tuple(entries))

    def keys(self) -> list[str]:
        """The images this ground truth names (empty for ground truth by index)."""
        return list(self.by_key)

    def __len__(self) -> int:
        return len(self.by_key) or len(self.by_index)

    def mask_for(self, image_path_or_key: str, size: tuple[int, int]) -> Optional[np.ndarray]:
        """The checked (H, W) bool mask of the image, or None when it has no ground truth here (the caller
        warns and skips it). The image is found by the key as given (a relative path), else by its base
        name, else by its stem; a base name or stem that several entries share raises, as the match would
        be a guess."""
        if self.by_index:
            raise GroundTruthError(f"this ground truth came from arrays and goes by image index: use mask_for_index, "
                                   f"not mask_for({image_path_or_key!r})")
        entry = self._lookup(image_path_or_key)
        return None if entry is None else entry.mask_at(size)

    def mask_for_index(self, index: int, size: tuple[int, int]) -> np.ndarray:
        """The checked (H, W) bool mask of the ``index``-th image, for ground truth from arrays."""
        if not self.by_index:
            raise GroundTruthError(f"this ground truth came from {self.source} and goes by image name: use mask_for")
        if not 0 <= index < len(self.by_index):
            raise GroundTruthError(f"ground truth for {len(self.by_index)} images has no image {index}")
        return self.by_index[index].mask_at(size)

    def _lookup(self, key: str) -> Optional[_Entry]:
        if key in self.by_key:
            return self.by_key[key]
        wanted = PurePath(key)
        for part in ("name", "stem"):
            matches = [k for k in self.by_key if getattr(PurePath(k), part) == getattr(wanted, part)]
            if len(matches) > 1:
                raise GroundTruthError(f"{self.source}: the image {key!r} is ambiguous: its {part} matches "
                                       f"{', '.join(map(repr, matches))}; name it by the path as given there")
            if matches:
                return self.by_key[matches[0]]
        return None


def _read_boxes_csv(path: Path) -> dict[str, list[tuple[float, ...]]]:
    boxes: dict[str, list[tuple[float, ...]]] = {}
    with open(path, newline="", encoding="utf-8-sig") as file:  # -sig: a spreadsheet's byte-order mark
        reader = csv.reader(file)
        header = next(reader, [])
        if tuple(cell.strip() for cell in header) != BOXES_HEADER:
            raise GroundTruthError(f"{path}, line 1: the header must be {','.join(BOXES_HEADER)}, "
                                   f"got {','.join(header)}")
        for row in reader:
            if not row:
                continue
            where = f"{path}, line {reader.line_num}"
            if len(row) != len(BOXES_HEADER) or not row[0].strip():
                raise GroundTruthError(f"{where}: expected an image name and 4 numbers, got {','.join(row)}")
            try:
                box = tuple(float(cell) for cell in row[1:])
            except ValueError:
                raise GroundTruthError(f"{where}: x0 y0 x1 y1 must be numbers, got {','.join(row[1:])}") from None
            boxes.setdefault(row[0].strip(), []).append(_checked_box(box, where))
    return boxes


def _read_boxes_json(path: Path) -> dict[str, list[tuple[float, ...]]]:
    try:
        with open(path) as file:
            data = json.load(file)
    except json.JSONDecodeError as error:
        raise GroundTruthError(f"{path}, line {error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise GroundTruthError(f"{path}: expected an object {{\"image\": [[x0, y0, x1, y1], ...]}}, "
                               f"got a {type(data).__name__}")
    boxes = {}
    for key, rows in data.items():
        where = f"{path}, image {key!r}"
        if not isinstance(rows, list) or not rows or not all(
                isinstance(row, list) and len(row) == 4 and all(_is_number(v) for v in row) for row in rows):
            raise GroundTruthError(f"{where}: expected a non-empty list of [x0, y0, x1, y1] numbers, got {rows!r}")
        boxes[key] = [_checked_box(row, where) for row in rows]
    return boxes


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
