"""Data steps on the unlabeled pool: keep part of it, or label it once with a teacher's predictions.

Self-training defenses learn from unlabeled data through pseudo-labels: RST (Carmon et al. 2019,
Sec. 4) and UAT-FT / UAT++ (Uesato et al. 2019, Sec. 4.1) train a standard model on the labeled
examples, label the unlabeled ones with its predictions once, then train on both. Here that is a
data step before training, on a dataset marked by ``pipeline.with_labeled_subset``:

* ``subsample_unlabeled(ds, num_unlabeled, seed)``: keeps every labeled example and a seeded
  choice of ``num_unlabeled`` unlabeled ones (SRT Sec. 4.5, the amount of unlabeled data; RST's
  ``aux_take_amount``). The choices for growing ``num_unlabeled`` are nested.
* ``pseudo_label(ds, predict)``: a ``PseudoLabeledDataset`` whose unlabeled examples carry
  ``argmax predict(x)`` in place of their labels, which it never reads (they are gone from the
  result). Training reads every label of it; its batches still mix the labeled and the
  pseudo-labeled examples as the semi-supervised batches do (``pipeline.stratified_indices``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from advjax.data.dataset import Dataset

Predict = Callable[[np.ndarray], Any]  # float32 images [B, H, W, C] in [0, 1] -> logits [B, K]


@dataclasses.dataclass(frozen=True, eq=False)
class PseudoLabeledDataset(Dataset):
    """A training set in which some labels are a teacher's predictions (self-training).

    Every label may be read by training (``labeled`` is None); ``pseudo`` (bool [N]) marks the
    examples whose label is a prediction. ``pipeline.train_batches`` mixes the two kinds in each
    batch as it mixes labeled and unlabeled examples (in proportion, or ``unlabeled_fraction``).
    """

    pseudo: np.ndarray | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        pseudo = np.asarray(self.pseudo)
        if pseudo.dtype != np.bool_ or pseudo.shape != self.labels.shape:
            raise ValueError(
                f"Dataset {self.name!r}: pseudo must be a bool mask of shape {self.labels.shape}, "
                f"got {pseudo.dtype} {pseudo.shape}."
            )
        if self.labeled is not None:
            raise ValueError(
                f"Dataset {self.name!r}: a pseudo-labeled dataset has no hidden labels (labeled "
                "must be None)."
            )
        object.__setattr__(self, "pseudo", pseudo)

    def take(self, indices: np.ndarray) -> PseudoLabeledDataset:
        return dataclasses.replace(
            self,
            images=self.images[indices],
            labels=self.labels[indices],
            pseudo=self.pseudo[indices],
        )

    @property
    def num_pseudo(self) -> int:
        return int(np.sum(self.pseudo))

    def __repr__(self) -> str:
        return (
            f"PseudoLabeledDataset(name={self.name!r}, n={len(self)}, pseudo={self.num_pseudo}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes})"
        )


def _unlabeled_indices(ds: Dataset, what: str) -> np.ndarray:
    if ds.labeled is None or ds.labeled.all():
        raise ValueError(
            f"{what} needs unlabeled training examples: mark a labeled subset first "
            "(data.num_labeled > 0, without data.labeled_only)."
        )
    return np.flatnonzero(~ds.labeled)


def subsample_unlabeled(ds: Dataset, num_unlabeled: int, seed: int) -> Dataset:
    """``ds`` with every labeled example and ``num_unlabeled`` of its unlabeled ones, in order.

    The kept unlabeled examples are the first ``num_unlabeled`` of the seeded permutation
    ``default_rng([seed, 4]).permutation(|D_U|)``: the choice depends only on (the unlabeled
    examples, ``num_unlabeled``, ``seed``), and a larger ``num_unlabeled`` keeps a superset.
    ``num_unlabeled = |D_U|`` returns ``ds`` itself.
    """
    unlabeled = _unlabeled_indices(ds, "subsample_unlabeled")
    if int(num_unlabeled) != num_unlabeled or not 0 < num_unlabeled <= len(unlabeled):
        raise ValueError(
            f"num_unlabeled must be an integer in [1, {len(unlabeled)}] (the unlabeled examples "
            f"there are), got {num_unlabeled}."
        )
    if num_unlabeled == len(unlabeled):
        return ds
    order = np.random.default_rng([seed, 4]).permutation(len(unlabeled))
    keep = np.concatenate([np.flatnonzero(ds.labeled), unlabeled[order[: int(num_unlabeled)]]])
    return ds.take(np.sort(keep))


def predicted_labels(images: np.ndarray, predict: Predict, batch_size: int = 500) -> np.ndarray:
    """``argmax predict(x)`` for uint8 ``images`` [N, H, W, C], in fixed-shape batches of
    ``batch_size`` (the last one padded with zeros), so that a jitted ``predict`` compiles once."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = np.empty(len(images), np.int32)
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        x = np.zeros((batch_size, *images.shape[1:]), np.float32)
        x[: len(chunk)] = chunk.astype(np.float32) / np.float32(255.0)
        logits = np.asarray(predict(x))
        if logits.ndim != 2 or logits.shape[0] != batch_size:
            raise ValueError(f"predict must return logits [{batch_size}, K], got {logits.shape}")
        out[start : start + len(chunk)] = np.argmax(logits[: len(chunk)], axis=-1)
    return out


def pseudo_label(ds: Dataset, predict: Predict, batch_size: int = 500) -> PseudoLabeledDataset:
    """Labels the unlabeled examples of ``ds`` with ``argmax predict(x)``, once (self-training).

    ``predict`` is the teacher: a standard model trained on the labeled examples alone (RST
    Sec. 4, UAT-FT). The labeled examples keep their labels; the unlabeled ones' labels in ``ds``
    are not read, and the result holds the predictions in their place.
    """
    unlabeled = _unlabeled_indices(ds, "pseudo_label")
    predicted = predicted_labels(ds.images[unlabeled], predict, batch_size)
    if predicted.size and predicted.max() >= ds.num_classes:
        raise ValueError(
            f"the teacher predicts class {predicted.max()}, but {ds.name!r} has "
            f"{ds.num_classes} classes"
        )
    labels = np.where(ds.labeled, ds.labels, 0).astype(np.int32)
    labels[unlabeled] = predicted
    return PseudoLabeledDataset(ds.images, labels, ds.num_classes, ds.name, pseudo=~ds.labeled)
