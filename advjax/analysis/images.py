"""Image grids and a dependency-free PNG writer (8-bit grey or RGB, zlib-compressed).

Example::

    grid = image_grid([clean, adv_1, adv_2], pad=2, scale=3)  # rows of [N, H, W, C] in [0, 1]
    write_png("figure.png", grid)
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_grid(
    rows: Sequence[np.ndarray], pad: int = 2, scale: int = 1, background: float = 1.0
) -> np.ndarray:
    """Tiles rows of NHWC images in [0, 1] into one ``uint8`` image ``[H', W', C]``.

    Every row must hold the same number of images of the same shape; ``scale`` repeats pixels
    (nearest neighbour) so small images such as MNIST stay legible.
    """
    rows = [np.asarray(r, np.float32) for r in rows]
    if not rows:
        raise ValueError("image_grid needs at least one row")
    shape = rows[0].shape
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise ValueError(f"rows must be NHWC with 1 or 3 channels, got shape {shape}")
    for i, r in enumerate(rows):
        if r.shape != shape:
            raise ValueError(f"row {i} has shape {r.shape}, row 0 has {shape}")
    if scale < 1 or pad < 0:
        raise ValueError(f"scale must be >= 1 and pad >= 0, got scale={scale}, pad={pad}")
    n, h, w, c = shape
    h, w = h * scale, w * scale
    out = np.full((len(rows) * (h + pad) + pad, n * (w + pad) + pad, c), background, np.float32)
    for i, row in enumerate(rows):
        big = row.repeat(scale, axis=1).repeat(scale, axis=2)
        for j in range(n):
            top, left = pad + i * (h + pad), pad + j * (w + pad)
            out[top : top + h, left : left + w] = big[j]
    return np.round(np.clip(out, 0.0, 1.0) * 255).astype(np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def write_png(path: str, image: np.ndarray) -> None:
    """Writes a ``uint8`` image ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` as a PNG file."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"write_png takes uint8 images, got {image.dtype}")
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        color_type = 0
    elif image.ndim == 3 and image.shape[-1] == 3:
        color_type = 2
    else:
        raise ValueError(f"write_png takes [H, W], [H, W, 1] or [H, W, 3], got {image.shape}")
    height, width = image.shape[:2]
    rows = image.reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1).tobytes()  # filter 0
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(_SIGNATURE)
        f.write(_chunk(b"IHDR", header))
        f.write(_chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(_chunk(b"IEND", b""))


def read_png(path: str) -> np.ndarray:
    """Reads the PNG files ``write_png`` writes (8-bit grey/RGB, filter 0, no interlace)."""
    with open(path, "rb") as f:
        data = f.read()
    if not data.startswith(_SIGNATURE):
        raise ValueError(f"{path} is not a PNG file")
    pos, idat, header = len(_SIGNATURE), b"", None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        if zlib.crc32(kind + body) != crc:
            raise ValueError(f"{path}: bad CRC in chunk {kind!r}")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    if header is None:
        raise ValueError(f"{path}: no IHDR chunk")
    width, height, depth, color_type, _, _, interlace = header
    if depth != 8 or color_type not in (0, 2) or interlace:
        raise ValueError(f"{path}: only 8-bit grey/RGB non-interlaced PNGs are supported")
    channels = 1 if color_type == 0 else 3
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(height, 1 + width * channels)
    if np.any(raw[:, 0] != 0):
        raise ValueError(f"{path}: only PNG filter type 0 is supported")
    return raw[:, 1:].reshape(height, width, channels)
