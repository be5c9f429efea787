"""Deterministic synthetic image classification data with learnable labels, for tests."""

from __future__ import annotations

import numpy as np

from advjax.data.dataset import Dataset

DEFAULT_SIZES = {"train": 1024, "test": 256}


def make_synthetic(
    split: str = "train",
    num_examples: int | None = None,
    image_shape: tuple[int, int, int] = (28, 28, 1),
    num_classes: int = 10,
    seed: int = 0,
    noise: float = 0.2,
) -> Dataset:
    """Images = class prototype (shared by all splits of one seed) + Gaussian noise, as uint8.

    The same `seed` gives the same prototypes for train and test, so a model fit on the
    train split generalises to the test split; the splits draw independent noise and labels.
    """
    if num_examples is None:
        num_examples = DEFAULT_SIZES[split]
    split_id = {"train": 0, "test": 1}[split]
    prototypes = np.random.default_rng([seed, 1000]).uniform(
        0.2, 0.8, size=(num_classes, *image_shape)
    )
    rng = np.random.default_rng([seed, split_id])
    labels = rng.integers(0, num_classes, size=num_examples).astype(np.int32)
    x = prototypes[labels] + noise * rng.standard_normal((num_examples, *image_shape))
    images = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Dataset(images=images, labels=labels, num_classes=num_classes, name="synthetic")
