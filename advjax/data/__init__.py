"""Datasets (local canonical files, tfds, synthetic), download, batching and augmentation."""

from advjax.data.augment import pad_crop_flip
from advjax.data.dataset import DATASETS, Dataset
from advjax.data.download import download
from advjax.data.pipeline import (
    UNLABELED,
    eval_batches,
    labeled_part,
    labeled_per_batch,
    num_eval_batches,
    split_validation,
    steps_per_epoch,
    train_batches,
    with_labeled_subset,
)
from advjax.data.pseudo_labels import PseudoLabeledDataset, pseudo_label, subsample_unlabeled
from advjax.data.sources import load_dataset

__all__ = [
    "DATASETS",
    "UNLABELED",
    "Dataset",
    "PseudoLabeledDataset",
    "download",
    "eval_batches",
    "labeled_part",
    "labeled_per_batch",
    "load_dataset",
    "num_eval_batches",
    "pad_crop_flip",
    "pseudo_label",
    "split_validation",
    "steps_per_epoch",
    "subsample_unlabeled",
    "train_batches",
    "with_labeled_subset",
]
