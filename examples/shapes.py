"""Synthetic data with known object locations: coloured shapes (circle, square, triangle) on clutter.

``make_shapes``: one object per image, labelled by its shape, with its box — a map that explains the class
should peak inside the box. ``make_scenes``: one to three objects per image with a per-pixel class map, for
segmentation.
"""

from __future__ import annotations

import numpy as np

CLASSES = ("circle", "square", "triangle")


def make_shapes(count: int, size: int = 64, seed: int = 0):
    """Return (images (count, 3, size, size) float32 in [0, 1], labels (count,), boxes (count, 4) as x0 y0 x1 y1)."""
    return _labelled(count, size, seed, CLASSES,
                     lambda rng, image, label: _paint_shape(rng, image, label, (0, 0), size)[1])


def _labelled(count: int, size: int, seed: int, classes, paint):
    """(images, labels, boxes): each image clutter with ``paint(rng, image, label)`` drawn on it, which returns
    the box of what makes the label."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, 3, size, size), np.float32)
    labels = rng.integers(0, len(classes), count)
    boxes = np.empty((count, 4), np.int64)
    for i in range(count):
        images[i] = _clutter(rng, size)
        boxes[i] = paint(rng, images[i], labels[i])
    return images, labels, boxes


def make_scenes(count: int, size: int = 64, seed: int = 0):
    """Return (images (count, 3, size, size) float32 in [0, 1], masks (count, size, size) int64).

    Each image holds one to three shapes, each in its own quarter of the image so none hides another;
    ``masks`` gives each pixel's class: 0 for the background, 1 + the index in ``CLASSES`` for a shape.
    """
    rng = np.random.default_rng(seed)
    images = np.empty((count, 3, size, size), np.float32)
    masks = np.zeros((count, size, size), np.int64)
    half = size // 2
    for i in range(count):
        images[i] = _clutter(rng, size)
        quarters = rng.permutation(4)[:rng.integers(1, 4)]
        for quarter, label in zip(quarters, rng.integers(0, len(CLASSES), len(quarters))):
            origin = (quarter % 2 * half, quarter // 2 * half)
            shape, _ = _paint_shape(rng, images[i], label, origin, half)
            masks[i][shape] = 1 + label
    return images, masks


def _clutter(rng, size: int) -> np.ndarray:
    """Dim noise plus a few faint random lines: enough to make the object the only strong evidence."""
    image = rng.uniform(0.0, 0.35, (3, size, size)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(4):
        angle, offset = rng.uniform(0, np.pi), rng.uniform(0, size)
        line = np.abs(np.cos(angle) * xx + np.sin(angle) * yy - offset) < 0.8
        image[:, line] = rng.uniform(0.2, 0.5, (3, 1))
    return image


def _paint_shape(rng, image: np.ndarray, label: int, origin: tuple[int, int], room: int):
    """Paint a shape of class ``label`` and random size and colour somewhere in the ``room`` x ``room`` square
    at ``origin`` (x, y) of ``image`` (3, H, W). Returns its pixels (H, W) bool and its box (x0, y0, x1, y1)."""
    size = image.shape[-1]
    extent = int(rng.integers(size // 5, size // 3))
    x0, y0 = (int(v) + o for v, o in zip(rng.integers(0, room - extent, 2), origin))
    yy, xx = np.mgrid[0:size, 0:size]
    shape = _shape_mask(label, xx - x0, yy - y0, extent)
    color = rng.uniform(0.6, 1.0, 3) * rng.permutation([1.0, rng.uniform(0, 0.5), rng.uniform(0, 0.5)])
    image[:, shape] = color[:, None]
    return shape, (x0, y0, x0 + extent, y0 + extent)


def _shape_mask(label: int, x: np.ndarray, y: np.ndarray, extent: int) -> np.ndarray:
    inside = (x >= 0) & (y >= 0) & (x < extent) & (y < extent)
    if CLASSES[label] == "square":
        return inside
    if CLASSES[label] == "circle":
        radius = extent / 2
        return (x - radius + 0.5) ** 2 + (y - radius + 0.5) ** 2 <= radius ** 2
    return inside & (np.abs(x - extent / 2 + 0.5) <= y / 2)  # triangle, apex up


MARKS = ("horizontal", "vertical")


def make_marked_shapes(count: int, size: int = 64, seed: int = 0):
    """A fine-grained variant of :func:`make_shapes`: every image holds a large shape of any class and colour,
    and inside it a small bar (2 x 7 pixels) in a contrasting colour; the label is only the bar's orientation
    (``MARKS``), so the evidence is a detail a few pixels across. Returns (images, labels, boxes), ``boxes``
    the bar's (x0, y0, x1, y1)."""
    def paint(rng, image: np.ndarray, label: int):
        _, (x0, y0, x1, y1) = _paint_shape(rng, image, rng.integers(0, len(CLASSES)), (0, 0), size)
        height, width = (2, 7) if MARKS[label] == "horizontal" else (7, 2)
        top = int(rng.integers(y0 + 1, max(y0 + 2, y1 - height)))
        left = int(rng.integers(x0 + 1, max(x0 + 2, x1 - width)))
        shape_color = image[:, min(top, size - 1), min(left, size - 1)]
        image[:, top:top + height, left:left + width] = (1.0 - shape_color)[:, None, None]
        return left, top, min(left + width, size), min(top + height, size)

    return _labelled(count, size, seed, MARKS, paint)
