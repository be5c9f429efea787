"""In-memory image classification dataset and the registry of known datasets."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a named dataset."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    tfds_name: str | None


SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", 10, (28, 28, 1), "mnist"),
    "cifar10": DatasetSpec("cifar10", 10, (32, 32, 3), "cifar10"),
    "cifar100": DatasetSpec("cifar100", 100, (32, 32, 3), "cifar100"),
    "svhn": DatasetSpec("svhn", 10, (32, 32, 3), "svhn_cropped"),
    "synthetic": DatasetSpec("synthetic", 10, (28, 28, 1), None),
}

DATASETS: tuple[str, ...] = tuple(SPECS)
SPLITS: tuple[str, ...] = ("train", "test")


def get_spec(name: str) -> DatasetSpec:
    """Returns the spec of `name`, or raises ValueError listing the valid names."""
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(DATASETS)}.") from None


def check_split(split: str) -> None:
    """Raises ValueError unless `split` is one of SPLITS."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; valid splits: {', '.join(SPLITS)}.")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A whole split in memory: uint8 NHWC images and int32 labels.

    ``labeled`` (optional bool [N]) marks the examples whose labels training may use (the rest are
    unlabeled data for semi-supervised defenses; see ``pipeline.with_labeled_subset``). None means
    every example is labeled.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str
    labeled: np.ndarray | None = None

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        labels = np.asarray(self.labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"Dataset {self.name!r}: images must be uint8 [N, H, W, C], "
                f"got {images.dtype} {images.shape}."
            )
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"Dataset {self.name!r}: labels must be integer [N], "
                f"got {labels.dtype} {labels.shape}."
            )
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"Dataset {self.name!r}: {images.shape[0]} images but {labels.shape[0]} labels."
            )
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"Dataset {self.name!r}: labels must lie in [0, {self.num_classes}), "
                f"got range [{labels.min()}, {labels.max()}]."
            )
        if self.labeled is not None:
            labeled = np.asarray(self.labeled)
            if labeled.dtype != np.bool_ or labeled.shape != labels.shape:
                raise ValueError(
                    f"Dataset {self.name!r}: labeled must be a bool mask of shape {labels.shape}, "
                    f"got {labeled.dtype} {labeled.shape}."
                )
            object.__setattr__(self, "labeled", labeled)
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels.astype(np.int32, copy=False))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def take(self, indices: np.ndarray) -> Dataset:
        """Returns the sub-dataset at `indices` (same name and classes)."""
        labeled = None if self.labeled is None else self.labeled[indices]
        return dataclasses.replace(
            self, images=self.images[indices], labels=self.labels[indices], labeled=labeled
        )

    @property
    def num_labeled(self) -> int:
        return len(self) if self.labeled is None else int(np.sum(self.labeled))

    def __repr__(self) -> str:
        labeled = "" if self.labeled is None else f", labeled={self.num_labeled}"
        return (
            f"Dataset(name={self.name!r}, n={len(self)}{labeled}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes})"
        )
