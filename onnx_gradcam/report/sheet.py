"""grid.png: a sheet of several images (rows) by several maps (columns), each column headed once.

:func:`onnx_gradcam.pictures.grid` compares the maps of one image, with a label over every tile; the
report's sheet needs a row per image, a header per column and a caption per row, so it lays its tiles out
here and leaves colouring and blending to :func:`onnx_gradcam.pictures.overlay`.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..pictures import as_rgb8, overlay

GAP = 4


def picture_sheet(images: Sequence[np.ndarray], labels: Sequence[str],
                  maps: Mapping[str, Sequence[Optional[np.ndarray]]], cell: int = 168, alpha: float = 0.5,
                  colormap: str = "jet") -> Image.Image:
    """Rows: ``images`` ((H, W, 3) in [0, 1], or uint8), the plain image first, captioned by ``labels``;
    columns: ``maps`` (header -> one (H, W) map in [0, 1] per image, or None where there is none), each
    overlaid on its image. Tiles are ``cell`` pixels wide at each image's aspect."""
    if not images:
        return _message("no pictures were chosen for the grid", cell)
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} grid images but {len(labels)} labels")
    for header, column in maps.items():
        if len(column) != len(images):
            raise ValueError(f"grid column {header!r} has {len(column)} maps for {len(images)} images")
    font = ImageFont.load_default(size=max(10, cell // 13))
    line = font.getbbox("Ag")[3] + 2
    headers = [_wrap(text, font, cell - 6, 3) for text in ["image", *maps]]
    header_height = line * max(len(lines) for lines in headers) + GAP
    captions = [_wrap(str(label), font, cell - 6, 2) for label in labels]
    caption_height = line * max(1, max(len(lines) for lines in captions)) + GAP
    pictures = [Image.fromarray(as_rgb8(image)) for image in images]
    heights = [round(cell * picture.height / picture.width) for picture in pictures]
    width = len(headers) * (cell + GAP) + GAP
    height = header_height + sum(heights) + len(images) * (caption_height + GAP) + GAP
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for column, lines in enumerate(headers):
        x = GAP + column * (cell + GAP) + cell // 2
        for number, text in enumerate(lines):
            draw.text((x, GAP + number * line), text, fill="black", font=font, anchor="ma")
    y = header_height
    for row, (picture, tile_height) in enumerate(zip(pictures, heights)):
        size = (cell, tile_height)
        tiles = [picture.resize(size, Image.BILINEAR)] + [_tile(picture, column[row], size, alpha, colormap)
                                                          for column in maps.values()]
        for column, tile in enumerate(tiles):
            sheet.paste(tile, (GAP + column * (cell + GAP), y))
        for number, text in enumerate(captions[row]):
            draw.text((GAP + 3, y + tile_height + 2 + number * line), text, fill="black", font=font)
        y += tile_height + caption_height + GAP
    return sheet


def _tile(picture: Image.Image, cam: Optional[np.ndarray], size: tuple[int, int], alpha: float,
          colormap: str) -> Image.Image:
    """The map over the picture at ``size``; a grey "no map" tile where ``cam`` is None."""
    if cam is None:
        tile = Image.new("RGB", size, (225, 225, 225))
        ImageDraw.Draw(tile).text((size[0] // 2, size[1] // 2), "no map", fill="dimgray", anchor="mm",
                                  font=ImageFont.load_default(size=max(10, size[0] // 12)))
        return tile
    return overlay(np.asarray(picture), cam, alpha, colormap).resize(size, Image.BILINEAR)


def _message(text: str, cell: int) -> Image.Image:
    font = ImageFont.load_default(size=max(10, cell // 13))
    sheet = Image.new("RGB", (3 * cell, cell // 2), "white")
    ImageDraw.Draw(sheet).text((3 * cell // 2, cell // 4), text, fill="dimgray", font=font, anchor="mm")
    return sheet


def _wrap(text: str, font, width: int, most: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels, broken after spaces, slashes, dots, underscores and
    dashes (layer names have no spaces), inside a word where nothing else fits; past ``most`` lines the last
    ends in an ellipsis."""
    pieces = [piece for piece in re.split(r"(?<=[\s/._·:-])", text) if piece]
    lines, current = [], ""
    for piece in pieces:
        while piece:
            if font.getlength(current + piece) <= width:
                current, piece = current + piece, ""
            elif current:
                lines.append(current.rstrip())
                current = ""
            else:  # one piece wider than a line: as many characters as fit
                cut = max(1, max(n for n in range(1, len(piece) + 1) if font.getlength(piece[:n]) <= width
                                 or n == 1))
                lines.append(piece[:cut])
                piece = piece[cut:]
    if current.strip():
        lines.append(current.rstrip())
    if len(lines) > most:
        last = lines[most - 1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines = lines[:most - 1] + [last + "…"]
    return lines
