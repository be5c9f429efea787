"""Readers for the CIFAR-10/100 "binary version" files (folder or .tar.gz archive)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np

_RECORD_PIXELS = 3 * 32 * 32

FOLDERS = {"cifar10": "cifar-10-batches-bin", "cifar100": "cifar-100-binary"}
ARCHIVES = {"cifar10": "cifar-10-binary.tar.gz", "cifar100": "cifar-100-binary.tar.gz"}
FILES = {
    "cifar10": {
        "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
        "test": ("test_batch.bin",),
    },
    "cifar100": {"train": ("train.bin",), "test": ("test.bin",)},
}
# (label bytes per record, which label byte to use, number of classes); CIFAR-100 uses fine.
_LAYOUT = {"cifar10": (1, 0, 10), "cifar100": (2, 1, 100)}


class CifarFormatError(ValueError):
    """A CIFAR binary file has the wrong size or out-of-range labels."""


def parse_records(data: bytes, name: str, source: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Parses concatenated binary records into uint8 [N, 32, 32, 3] (HWC) and int32 [N]."""
    label_bytes, label_index, num_classes = _LAYOUT[name]
    record = label_bytes + _RECORD_PIXELS
    if len(data) == 0 or len(data) % record:
        raise CifarFormatError(
            f"{source}: {len(data)} bytes is not a whole number of {record}-byte {name} records "
            "(truncated or not a CIFAR binary file)."
        )
    rows = np.frombuffer(data, np.uint8).reshape(-1, record)
    labels = rows[:, label_index].astype(np.int32)
    if labels.max() >= num_classes:
        raise CifarFormatError(f"{source}: label {labels.max()} >= {num_classes} classes.")
    images = rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def expected_files(name: str, split: str) -> str:
    """Human-readable description of the files a split needs."""
    files = ", ".join(FILES[name][split])
    return f"{FOLDERS[name]}/{{{files}}} or {ARCHIVES[name]}"


def locate(directory: Path, name: str, split: str) -> Path | None:
    """Finds a folder holding the split's files, or the archive, in `directory`."""
    needed = FILES[name][split]
    for folder in (directory / FOLDERS[name], directory):
        if all((folder / f).is_file() for f in needed):
            return folder
    archive = directory / ARCHIVES[name]
    return archive if archive.is_file() else None


def load(location: Path, name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads a split from a folder or archive found by `locate`."""
    needed = FILES[name][split]
    if location.is_dir():
        blobs = {f: (location / f).read_bytes() for f in needed}
    else:
        blobs = {}
        try:
            with tarfile.open(location, "r:*") as tar:
                for member in tar:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in needed and base not in blobs:
                        blobs[base] = tar.extractfile(member).read()  # type: ignore[union-attr]
        except (tarfile.TarError, EOFError, OSError) as e:
            raise CifarFormatError(f"{location}: unreadable archive ({e}).") from e
        missing = [f for f in needed if f not in blobs]
        if missing:
            raise CifarFormatError(f"{location}: archive lacks {', '.join(missing)}.")
    parts = [parse_records(blobs[f], name, source=f"{location}/{f}") for f in needed]
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
    )
