"""`load_dataset`: one entry point over local canonical files, tfds, and synthetic data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from advjax.data import cifar, idx, svhn, tfds_source
from advjax.data.dataset import DATASETS, Dataset, check_split, get_spec
from advjax.data.synthetic import make_synthetic

ENV_DATA_DIR = "ADVJAX_DATA_DIR"
SOURCES = ("auto", "local", "tfds", "synthetic")

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# What to put in a local data folder, per dataset (for error messages).
CANONICAL = {
    "mnist": "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    "t10k-labels-idx1-ubyte.gz (gzip or uncompressed)",
    "cifar10": "cifar-10-binary.tar.gz or its extracted cifar-10-batches-bin/ folder "
    "(data_batch_1.bin .. data_batch_5.bin, test_batch.bin)",
    "cifar100": "cifar-100-binary.tar.gz or its extracted cifar-100-binary/ folder "
    "(train.bin, test.bin)",
    "svhn": "train_32x32.mat, test_32x32.mat",
}


def _mnist_file(directory: Path, stem: str) -> Path | None:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _mnist_locate(directory: Path, split: str) -> tuple[Path, Path] | None:
    images, labels = (_mnist_file(directory, s) for s in MNIST_FILES[split])
    return (images, labels) if images and labels else None


def _mnist_load(location: tuple[Path, Path], split: str) -> tuple[np.ndarray, np.ndarray]:
    return idx.read_mnist_pair(*location)


# name -> (locate(dir, split) -> location | None, load(location, split), files needed(split)).
_LocalReader = tuple[
    Callable[[Path, str], Any],
    Callable[[Any, str], tuple[np.ndarray, np.ndarray]],
    Callable[[str], str],
]
_LOCAL: dict[str, _LocalReader] = {
    "mnist": (
        _mnist_locate,
        _mnist_load,
        lambda split: " + ".join(f"{s}[.gz]" for s in MNIST_FILES[split]),
    ),
    "cifar10": (
        lambda d, s: cifar.locate(d, "cifar10", s),
        lambda loc, s: cifar.load(loc, "cifar10", s),
        lambda s: cifar.expected_files("cifar10", s),
    ),
    "cifar100": (
        lambda d, s: cifar.locate(d, "cifar100", s),
        lambda loc, s: cifar.load(loc, "cifar100", s),
        lambda s: cifar.expected_files("cifar100", s),
    ),
    "svhn": (svhn.locate, svhn.load, svhn.expected_files),
}


def local_root(data_dir: str | os.PathLike | None) -> tuple[Path | None, str]:
    """The local data folder (argument, else $ADVJAX_DATA_DIR) and where it came from."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "data_dir argument"
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser(), f"${ENV_DATA_DIR}"
    return None, ""


def _try_local(name: str, split: str, data_dir: Any, looked: list[str]) -> Dataset | None:
    root, origin = local_root(data_dir)
    if root is None:
        looked.append(f"local files: no data_dir given and ${ENV_DATA_DIR} is not set")
        return None
    locate, load, needs = _LOCAL[name]
    for directory in (root, root / name):
        if not directory.is_dir():
            looked.append(f"local directory {directory} ({origin}): does not exist")
            continue
        location = locate(directory, split)
        if location is None:
            looked.append(f"local directory {directory} ({origin}): no {needs(split)}")
            continue
        images, labels = load(location, split)
        return Dataset(images, labels, get_spec(name).num_classes, name)
    return None


def _try_tfds(name: str, split: str, dirs: list[str], looked: list[str]) -> Dataset | None:
    tfds_name = get_spec(name).tfds_name
    assert tfds_name is not None
    for data_dir in dirs:
        try:
            source = tfds_source.open_source(tfds_name, split, data_dir)
        except FileNotFoundError as e:
            looked.append(f"tfds data_dir {data_dir}: {e}")
            continue
        images, labels = tfds_source.read_all(source)
        return Dataset(images, labels, get_spec(name).num_classes, name)
    return None


def _not_found(name: str, split: str, looked: list[str]) -> FileNotFoundError:
    tfds_name = get_spec(name).tfds_name
    places = "\n".join(f"  - {p}" for p in looked)
    return FileNotFoundError(
        f"No data found for dataset {name!r} split {split!r}. Looked in:\n{places}\n"
        "To provide it, do one of:\n"
        f"  - set ${ENV_DATA_DIR} (or config.data.data_dir) to a folder holding {CANONICAL[name]}"
        f" (directly or in a '{name}/' subfolder);\n"
        f"  - run `advjax.data.download({name!r}, DIR)` on a machine with internet access and "
        "copy DIR here;\n"
        f"  - prepare the tfds dataset {tfds_name!r} in array_record format "
        f"(`{tfds_source.PREPARE_HINT.format(tfds_name=tfds_name)}`) into the tfds data_dir "
        "($TFDS_DATA_DIR or ~/tensorflow_datasets)."
    )


def load_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    source: str = "auto",
    **kwargs: Any,
) -> Dataset:
    """Loads a whole split into memory as a `Dataset` (uint8 NHWC images, int32 labels).

    Args:
      name: one of `DATASETS` ("mnist", "cifar10", "cifar100", "svhn", "synthetic").
      split: "train" or "test".
      data_dir: folder with canonical files (else $ADVJAX_DATA_DIR); also tried as tfds data_dir.
      source: "local" (canonical files), "tfds" (prepared tfds dataset, no download),
        "auto" (local, then tfds), or "synthetic" (fake data with the dataset's shape).
      **kwargs: options of `make_synthetic` (num_examples, image_shape, num_classes, seed,
        noise), only for synthetic data.
    """
    spec = get_spec(name)
    check_split(split)
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; valid sources: {', '.join(SOURCES)}.")
    if name == "synthetic" or source == "synthetic":
        kwargs.setdefault("image_shape", spec.image_shape)
        kwargs.setdefault("num_classes", spec.num_classes)
        ds = make_synthetic(split, **kwargs)
        return (
            ds
            if name == "synthetic"
            else Dataset(ds.images, ds.labels, ds.num_classes, f"synthetic-{name}")
        )
    if kwargs:
        raise TypeError(f"Unexpected arguments for {name!r}: {', '.join(kwargs)}.")

    looked: list[str] = []
    if source in ("auto", "local"):
        ds = _try_local(name, split, data_dir, looked)
        if ds is not None:
            return ds
    if source in ("auto", "tfds"):
        if source == "tfds" and data_dir is not None:
            dirs = [str(data_dir)]
        else:
            root, _ = local_root(data_dir)
            dirs = [str(root)] if root is not None and source == "auto" else []
            default = tfds_source.default_data_dir()
            dirs += [default] if default not in dirs else []
        ds = _try_tfds(name, split, dirs, looked)
        if ds is not None:
            return ds
    raise _not_found(name, split, looked)


__all__ = ["DATASETS", "Dataset", "load_dataset", "local_root"]
