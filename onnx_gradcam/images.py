"""Reading image files into a model's input: resize, scale, normalise, lay out. Pillow and NumPy only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Preprocessing:
    """How a picture becomes one input row: resized to ``size`` (height, width), scaled to [0, 1], normalised
    with ``mean`` and ``std`` per channel, channels in ``channel_order``, laid out as ``layout``."""

    size: Optional[tuple[int, int]] = None
    mean: Sequence[float] = field(default_factory=lambda: (0.0, 0.0, 0.0))
    std: Sequence[float] = field(default_factory=lambda: (1.0, 1.0, 1.0))
    channel_order: str = "RGB"
    layout: str = "NCHW"

    @classmethod
    def from_metadata(cls, values: dict, layout: str, size: Optional[Sequence[int]] = None) -> "Preprocessing":
        """From the model's ``preprocessing`` metadata; ``size`` (from the model's input shape) is the fallback."""
        chosen = values.get("size") or size
        return cls(size=tuple(chosen) if chosen else None, mean=tuple(values.get("mean", (0.0, 0.0, 0.0))),
                   std=tuple(values.get("std", (1.0, 1.0, 1.0))), channel_order=values.get("channel_order", "RGB"),
                   layout=layout)

    def __call__(self, picture: Image.Image) -> np.ndarray:
        """One (C, H, W) or (H, W, C) float32 array."""
        picture = picture.convert("RGB")
        if self.size is not None:
            picture = picture.resize((self.size[1], self.size[0]), Image.BILINEAR)
        array = np.asarray(picture, dtype=np.float32) / 255.0
        if self.channel_order.upper() == "BGR":
            array = array[..., ::-1]
        array = (array - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(array.transpose(2, 0, 1) if self.layout == "NCHW" else array)


def load_picture(path: str) -> Image.Image:
    """Open an image file fully (so a truncated or corrupt file fails here, with its name)."""
    try:
        with Image.open(path) as picture:
            picture.load()
            return picture.convert("RGB")
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read image {path!r}: {error}") from None


def display_rgb(picture: Image.Image, size: Optional[tuple[int, int]]) -> np.ndarray:
    """The picture as the model saw it (resized), as (H, W, 3) uint8, for overlays."""
    if size is not None:
        picture = picture.resize((size[1], size[0]), Image.BILINEAR)
    return np.asarray(picture.convert("RGB"))
