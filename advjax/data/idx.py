"""Parser for the big-endian IDX format (MNIST's canonical files), gzip or plain."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

# IDX type code -> big-endian numpy dtype.
_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MAGIC_IMAGES = 0x00000803  # uint8, 3 dims [N, rows, cols]
MAGIC_LABELS = 0x00000801  # uint8, 1 dim [N]


class IdxFormatError(ValueError):
    """A file is not valid IDX (wrong magic, dims, size, or corrupt compression)."""


def read_bytes(path: str | os.PathLike) -> bytes:
    """Reads a file, transparently gunzipping it when it starts with the gzip magic."""
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as e:
            raise IdxFormatError(f"{path}: corrupt or truncated gzip stream ({e}).") from e
    return data


def parse_idx(
    data: bytes, source: str = "<bytes>", expected_magic: int | None = None
) -> np.ndarray:
    """Parses uncompressed IDX bytes into an array (native byte order).

    Raises IdxFormatError on a bad magic number, a mismatch with `expected_magic`,
    or a payload whose length does not match the header's dimensions.
    """
    if len(data) < 4:
        raise IdxFormatError(f"{source}: {len(data)} bytes is too short for an IDX header.")
    magic = int.from_bytes(data[:4], "big")
    type_code, ndim = data[2], data[3]
    if data[0] != 0 or data[1] != 0 or type_code not in _DTYPES or ndim == 0:
        raise IdxFormatError(
            f"{source}: bad IDX magic number 0x{magic:08x} (expected 0x0000TTDD with a known "
            f"type code TT and DD >= 1 dims); not an IDX file or corrupted."
        )
    if expected_magic is not None and magic != expected_magic:
        raise IdxFormatError(f"{source}: IDX magic 0x{magic:08x}, expected 0x{expected_magic:08x}.")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{source}: truncated IDX header ({len(data)} < {header} bytes).")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _DTYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(data) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise IdxFormatError(
            f"{source}: IDX payload {what}: header dims {dims} need {expected} bytes, found {got}."
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Reads an IDX file (gzip-compressed or not)."""
    return parse_idx(read_bytes(path), source=str(path), expected_magic=expected_magic)


def read_mnist_pair(
    images_path: str | os.PathLike, labels_path: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """Reads an MNIST-style images/labels pair: uint8 [N, H, W, 1] and int32 [N]."""
    images = read_idx(images_path, expected_magic=MAGIC_IMAGES)
    labels = read_idx(labels_path, expected_magic=MAGIC_LABELS)
    if images.shape[0] != labels.shape[0]:
        raise IdxFormatError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels."
        )
    return images[..., None], labels.astype(np.int32)
