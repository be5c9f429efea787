"""Reader for SVHN's canonical cropped-digits files (train_32x32.mat, test_32x32.mat)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}


def expected_files(split: str) -> str:
    """Human-readable description of the file a split needs."""
    return FILES[split]


def locate(directory: Path, split: str) -> Path | None:
    """Returns the split's .mat file in `directory`, if present."""
    path = directory / FILES[split]
    return path if path.is_file() else None


def load(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads a .mat file: X [32, 32, 3, N] -> uint8 [N, 32, 32, 3]; label 10 means digit 0."""
    from scipy.io import loadmat  # Lazy: only SVHN's local files need scipy.

    mat = loadmat(path)
    if "X" not in mat or "y" not in mat or mat["X"].ndim != 4:
        raise ValueError(f"{path}: expected variables X [32, 32, 3, N] and y [N, 1].")
    images = np.ascontiguousarray(np.transpose(mat["X"], (3, 0, 1, 2)).astype(np.uint8))
    labels = mat["y"].reshape(-1).astype(np.int32) % 10
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: {images.shape[0]} images but {labels.shape[0]} labels.")
    return images, labels
