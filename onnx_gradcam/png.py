"""A PNG encoder for overlays, nearly five times faster than Pillow's, for a smaller file.

Pillow's encoder tries all five PNG filters on every row and keeps the best (libpng's heuristic), which
costs more than the compression itself: 4.3 ms for a 224x224 RGB overlay at zlib level 1 (84 KB), 2.2 ms
even uncompressed. An overlay is a smooth colour map blended over a photograph, so one fixed filter does
as well: *Up* (each byte minus the one above it, PNG filter type 2) leaves small residuals everywhere, and
Huffman coding alone (no LZ77 search) packs them into 78 KB in 0.9 ms (measured on the throughput
benchmark's images with a Grad-CAM blob). zlib releases the GIL while it compresses, so writer threads
encode in parallel. Lossless: Pillow reads back exactly the pixels written (tests).

The file format is the PNG specification's (ISO/IEC 15948): the signature, then IHDR, one IDAT and IEND
chunks, each a big-endian length, a type, the data and a CRC-32 of type and data.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_UP = 2
_COLOR_TYPES = {1: 0, 3: 2, 4: 6}
"""PNG colour type by channel count: gray, RGB, RGBA (8 bits per channel)."""


def write_png(handle: BinaryIO, pixels: np.ndarray) -> None:
    """Write ``pixels``, (H, W) or (H, W, C) uint8 with C of 1, 3 or 4, to ``handle`` as a PNG file."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in _COLOR_TYPES or 0 in pixels.shape:
        raise ValueError(f"a PNG is written from (H, W) or (H, W, 1|3|4) uint8 pixels, not {pixels.dtype} "
                         f"{pixels.shape}")
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels)
    filtered = np.empty((height, rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = _UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # modulo 256, as the filter is defined
    deflate = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOR_TYPES[channels], 0, 0, 0)
    handle.write(SIGNATURE)
    handle.write(_chunk(b"IHDR", header))
    handle.write(_chunk(b"IDAT", deflate.compress(filtered.data) + deflate.flush()))
    handle.write(_chunk(b"IEND", b""))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
