"""A synthetic data set with known object boxes: one coloured shape (circle, square, triangle) on clutter.

Every image has exactly one object whose class is its shape, so a map that explains the class should
peak inside the object's box.
"""

from __future__ import annotations

import numpy as np

CLASSES = ("circle", "square", "triangle")


def make_shapes(count: int, size: int = 64, seed: int = 0):
    """Return (images (count, 3, size, size) float32 in [0, 1], labels (count,), boxes (count, 4) as x0 y0 x1 y1)."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, 3, size, size), np.float32)
    labels = rng.integers(0, len(CLASSES), count)
    boxes = np.empty((count, 4), np.int64)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(count):
        image = _clutter(rng, size, yy, xx)
        extent = int(rng.integers(size // 5, size // 3))
        x0, y0 = (int(v) for v in rng.integers(0, size - extent, 2))
        mask = _shape_mask(labels[i], xx - x0, yy - y0, extent)
        color = rng.uniform(0.6, 1.0, 3) * rng.permutation([1.0, rng.uniform(0, 0.5), rng.uniform(0, 0.5)])
        image[:, mask] = color[:, None]
        images[i] = image
        boxes[i] = (x0, y0, x0 + extent, y0 + extent)
    return images, labels, boxes


def _clutter(rng, size, yy, xx) -> np.ndarray:
    """Dim noise plus a few faint random lines: enough to make the object the only strong evidence."""
    image = rng.uniform(0.0, 0.35, (3, size, size)).astype(np.float32)
    for _ in range(4):
        angle, offset = rng.uniform(0, np.pi), rng.uniform(0, size)
        line = np.abs(np.cos(angle) * xx + np.sin(angle) * yy - offset) < 0.8
        image[:, line] = rng.uniform(0.2, 0.5, (3, 1))
    return image


def _shape_mask(label: int, x: np.ndarray, y: np.ndarray, extent: int) -> np.ndarray:
    inside = (x >= 0) & (y >= 0) & (x < extent) & (y < extent)
    if CLASSES[label] == "square":
        return inside
    if CLASSES[label] == "circle":
        radius = extent / 2
        return (x - radius + 0.5) ** 2 + (y - radius + 0.5) ** 2 <= radius ** 2
    return inside & (np.abs(x - extent / 2 + 0.5) <= y / 2)  # triangle, apex up
