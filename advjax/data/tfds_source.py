"""Reading prepared tfds datasets through `tfds.data_source` (random access, no TensorFlow)."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

_CHUNK = 2048
PREPARE_HINT = "tfds build {tfds_name} --file_format=array_record"


def default_data_dir() -> str:
    """tfds's default data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets), read now."""
    default = os.path.join(os.path.expanduser("~"), "tensorflow_datasets")
    return os.environ.get("TFDS_DATA_DIR", default)


def _records(source: Any, keys: Sequence[int]) -> list[dict]:
    """Batched read with `__getitems__`, falling back to item-by-item indexing."""
    getitems = getattr(source, "__getitems__", None)
    if getitems is not None:
        try:
            return list(getitems(list(keys)))
        except TypeError:  # Some sources (e.g. tfds's mock) implement it incompletely.
            pass
    return [source[i] for i in keys]


def open_source(tfds_name: str, split: str, data_dir: str) -> Any:
    """Opens a prepared dataset; raises FileNotFoundError saying why it is unavailable."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise FileNotFoundError(f"tensorflow_datasets is not installed ({e}).") from e
    try:
        return tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # noqa: BLE001 - tfds raises many types for "not prepared".
        folder = os.path.join(data_dir, tfds_name)
        if not os.path.isdir(folder):
            reason = f"not prepared (no folder {folder})"
        elif not glob.glob(os.path.join(folder, "**", "dataset_info.json"), recursive=True):
            reason = f"not prepared (no dataset_info.json under {folder})"
        else:
            reason = f"unusable ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        raise FileNotFoundError(f"tfds {tfds_name!r} split {split!r} {reason}") from e


def read_all(source: Any) -> tuple[np.ndarray, np.ndarray]:
    """Reads every record of a data source into uint8 images and int32 labels."""
    n = len(source)
    images, labels = [], []
    for start in range(0, n, _CHUNK):
        recs = _records(source, range(start, min(n, start + _CHUNK)))
        images.append(np.stack([np.asarray(r["image"], np.uint8) for r in recs]))
        labels.append(np.asarray([r["label"] for r in recs], np.int32))
    if not images:
        raise FileNotFoundError("tfds data source is empty.")
    return np.concatenate(images), np.concatenate(labels)
