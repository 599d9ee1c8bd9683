"""Reading image files into a model's input: orient, resize, scale, normalise, lay out. Pillow and NumPy only.

Pictures are read faithfully: EXIF orientation applied, 16-bit and float pictures scaled by their own range
(Pillow's conversion to 8 bits clips 16-bit values at 255), CMYK, palette and alpha converted by Pillow, and
as many channels (1, 3 or 4) as the model's input has.
"""

from __future__ import annotations

import io

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHANNEL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
"""The 8-bit Pillow mode a picture is converted to for a model of that many channels."""
WIDE_MODES = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}
"""Single-channel modes wider than 8 bits (16-bit PNG and TIFF open as I;16 or I, float TIFF as F), and the
value that reads as 1: 16-bit integers span 0..65535, floats are taken as stored (already 0..1)."""


@dataclass
class Preprocessing:
    """How a picture becomes one input row: resized to ``size`` (height, width), scaled to [0, 1], normalised
    with ``mean`` and ``std`` (one value for every channel, or one per channel), channels in
    ``channel_order``, as many as ``channels`` (1, 3 or 4), laid out as ``layout``."""

    size: Optional[tuple[int, int]] = None
    mean: Sequence[float] = field(default_factory=lambda: (0.0,))
    std: Sequence[float] = field(default_factory=lambda: (1.0,))
    channel_order: str = "RGB"
    layout: str = "NCHW"
    channels: int = 3

    def __post_init__(self):
        if self.channels not in CHANNEL_MODES:
            raise ValueError(f"images are read as 1 (gray), 3 (RGB) or 4 (RGBA) channels, not {self.channels}")
        for name in ("mean", "std"):
            values = tuple(getattr(self, name))
            if len(values) not in (1, self.channels):
                raise ValueError(f"{name} {values} has {len(values)} values for {self.channels}-channel images: "
                                 f"give one per channel, or one for all")
        if 0 in tuple(self.std):
            raise ValueError(f"std {tuple(self.std)} holds a zero: pixels are divided by it, give non-zero values")

    @classmethod
    def from_metadata(cls, values: dict, layout: str, size: Optional[Sequence[int]] = None,
                      channels: int = 3) -> "Preprocessing":
        """From the model's ``preprocessing`` metadata; ``size`` (from the model's input shape) is the fallback."""
        chosen = values.get("size") or size
        return cls(size=tuple(chosen) if chosen else None, mean=tuple(values.get("mean", (0.0,))),
                   std=tuple(values.get("std", (1.0,))), channel_order=values.get("channel_order", "RGB"),
                   layout=layout, channels=channels)

    @classmethod
    def from_input(cls, values: dict, shape: Optional[Sequence], layout: str) -> "Preprocessing":
        """For a model's image input of ``shape`` (laid out ``layout``): its fixed size and its channel count
        (3 where the shape does not say), with the ``preprocessing`` metadata ``values`` on top."""
        shape = list(shape or [None] * 4)
        spatial = shape[2:4] if layout == "NCHW" else shape[1:3]
        size = spatial if all(isinstance(d, int) for d in spatial) else None
        channels = shape[layout.index("C")]
        return cls.from_metadata(values, layout, size, channels if isinstance(channels, int) else 3)

    def __call__(self, picture: Image.Image) -> np.ndarray:
        """One (C, H, W) or (H, W, C) float32 array."""
        order = self._source_channels()
        if picture.mode in WIDE_MODES:
            array = (pixels(picture, self.channels, self.size)[..., order] - self._mean()) / self._std()
            return np.ascontiguousarray(array.transpose(2, 0, 1) if self.layout == "NCHW" else array)
        return self._looked_up(np.asarray(_eight_bit(picture, CHANNEL_MODES[self.channels], self.size)), order)

    def _looked_up(self, levels: np.ndarray, order: list[int]) -> np.ndarray:
        """8-bit ``levels`` (H, W[, C]) through a table of each channel's 256 normalised values: the same
        float32 operations on 256 values instead of every pixel, so the same bits at half the cost."""
        levels = levels.reshape(*levels.shape[:2], -1)
        table = (np.arange(256, dtype=np.float32) / np.float32(255) - self._mean()[:, None]) / self._std()[:, None]
        height, width = levels.shape[:2]
        shape = (self.channels, height, width) if self.layout == "NCHW" else (height, width, self.channels)
        array = np.empty(shape, np.float32)
        for channel, source in enumerate(order):
            plane = array[channel] if self.layout == "NCHW" else array[..., channel]
            np.take(table[channel], levels[..., source], out=plane, mode="clip")  # "clip": unbuffered; never hit
        return array

    def _source_channels(self) -> list[int]:
        """The picture's channel for each of the model's: RGB(A) as read, or the first three reversed."""
        order = list(range(self.channels))
        if self.channel_order.upper() == "BGR" and self.channels > 1:
            order[:3] = [2, 1, 0]
        return order

    def _mean(self) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.mean, np.float32), (self.channels,))

    def _std(self) -> np.ndarray:
        return np.broadcast_to(np.asarray(self.std, np.float32), (self.channels,))


def pixels(picture: Image.Image, channels: int = 3, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """The picture as (H, W, ``channels``) float32 in [0, 1], resized to ``size`` (height, width) if given.

    8-bit pictures go through Pillow's own conversion (palette, alpha, CMYK) and resize, as before; wider ones
    are resized as floats, so none of their levels is clipped or lost. A wide gray picture is repeated into
    RGB (with an opaque alpha for 4 channels).
    """
    scale = WIDE_MODES.get(picture.mode)
    if scale is None:
        array = np.asarray(_eight_bit(picture, CHANNEL_MODES[channels], size), np.float32) / np.float32(255)
    else:
        picture = Image.fromarray(np.asarray(picture, np.float32), "F")
        if size is not None:
            picture = picture.resize((size[1], size[0]), Image.BILINEAR)
        array = np.asarray(picture, np.float32) / np.float32(scale)
    array = array.reshape(*array.shape[:2], -1)
    if array.shape[-1] == channels:
        return array
    gray = np.repeat(array, 3, axis=-1)
    return gray if channels == 3 else np.concatenate([gray, np.ones_like(array)], axis=-1)


def _eight_bit(picture: Image.Image, mode: str, size: Optional[tuple[int, int]]) -> Image.Image:
    """An 8-bit picture in ``mode`` by Pillow's own conversion (palette, alpha, CMYK), resized to ``size``."""
    picture = picture.convert(mode)
    return picture if size is None else picture.resize((size[1], size[0]), Image.BILINEAR)


def load_picture(path: str, data: Optional[bytes] = None) -> Image.Image:
    """Open an image file fully (so a truncated or corrupt file fails here, with its name), upright (its EXIF
    orientation applied), in its own mode (16-bit and float pictures keep their depth for :func:`pixels`).
    ``data``: the file's bytes, already read (a Ray row), decoded in its stead; errors still name ``path``."""
    source = path if data is None else io.BytesIO(data)
    try:
        with Image.open(source) as picture:
            picture.load()
            return ImageOps.exif_transpose(picture)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read image {path!r}: {str(error).replace(repr(source), repr(path))}") from None


def display_rgb(picture: Image.Image, size: Optional[tuple[int, int]]) -> np.ndarray:
    """The picture as the model saw it (resized to ``size``, or at its own size for None), as (H, W, 3) uint8,
    for overlays; 16-bit and float pictures scaled as for the model, NaN shown black. An 8-bit picture's are
    Pillow's uint8 pixels, the very values the model's floats were scaled from (without the round trip
    through floats, a millisecond of an overlay's cost)."""
    if picture.mode not in WIDE_MODES:
        return np.asarray(_eight_bit(picture, "RGB", size))
    rgb = np.nan_to_num(pixels(picture, 3, size), nan=0.0, posinf=1.0, neginf=0.0)
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)
