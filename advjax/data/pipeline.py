"""Deterministic, resumable, host-sharded batching for data-parallel training and evaluation.

Layout: a global batch is split into `process_count` contiguous per-host slices; each host
reshapes its slice to [local_device_count, per_device, ...], ready for `jax.pmap` (or for
`jax.make_array_from_process_local_data` after a reshape).

Labeled/unlabeled data (semi-supervised training, SRT Sec. 4): `with_labeled_subset` marks a seeded
subset of the training set as labeled. Training batches of such a dataset then mix the two sets in
proportion to their sizes, as SRT Sec. 4 prescribes ("for a total batch size m, the number of
labeled samples and unlabeled samples within a batch is m |D_L| / (|D_L| + |D_U|) and
m |D_U| / (|D_L| + |D_U|)"), carry a bool "labeled" field, and hide the labels of unlabeled
examples (label `UNLABELED` = -1). A `PseudoLabeledDataset` (`advjax.data.pseudo_labels`: the
unlabeled examples labelled by a teacher, RST / UAT-FT) is mixed the same way, its pseudo-labeled
examples in the unlabeled part, and its batches carry every label. `unlabeled_fraction` sets the
unlabeled part of each batch instead (RST's `unsup_fraction`, 0.5 in its code).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import numpy as np

from advjax.data.dataset import Dataset
from advjax.data.pseudo_labels import PseudoLabeledDataset

Batch = dict[str, np.ndarray]

UNLABELED = -1  # the "label" of unlabeled examples in training batches


def split_validation(ds: Dataset, num_val: int, seed: int) -> tuple[Dataset, Dataset]:
    """Carves `num_val` examples (chosen by a seeded permutation) off as a validation set.

    Both parts keep the original order of their examples; the result depends only on
    (len(ds), num_val, seed).
    """
    n = len(ds)
    if not 0 < num_val < n:
        raise ValueError(f"num_val must be in (0, {n}) for a dataset of {n}, got {num_val}.")
    perm = np.random.default_rng(seed).permutation(n)
    return ds.take(np.sort(perm[num_val:])), ds.take(np.sort(perm[:num_val]))


def with_labeled_subset(ds: Dataset, num_labeled: int, seed: int) -> Dataset:
    """Marks `num_labeled` examples (a seeded choice) as labeled and the rest as unlabeled.

    `num_labeled` of 0 or `len(ds)` leaves every example labeled (`ds` itself is returned). The
    choice depends only on (len(ds), num_labeled, seed).
    """
    n = len(ds)
    if int(num_labeled) != num_labeled or not 0 <= num_labeled <= n:
        raise ValueError(
            f"num_labeled must be an integer in [0, {n}] for a training set of {n} examples "
            f"(0: all labeled), got {num_labeled}."
        )
    if num_labeled in (0, n):
        return ds
    labeled = np.zeros(n, bool)
    labeled[np.random.default_rng([seed, 2]).permutation(n)[: int(num_labeled)]] = True
    return Dataset(ds.images, ds.labels, ds.num_classes, ds.name, labeled=labeled)


def labeled_part(ds: Dataset) -> Dataset:
    """The labeled examples of `ds` alone (in their order), every one labeled.

    The training set of a supervised baseline in the semi-supervised protocol (SRT Sec. 4: 10,000
    labeled images "in all experiments"): the same examples `with_labeled_subset` leaves labeled
    for SRT, without the unlabeled rest. A dataset with every example labeled is returned as is.
    """
    if ds.labeled is None:
        return ds
    return dataclasses.replace(ds.take(np.flatnonzero(ds.labeled)), labeled=None)


def labeled_per_batch(num_labeled: int, n: int, global_batch_size: int) -> int:
    """Labeled examples in each global batch: `m |D_L| / (|D_L| + |D_U|)` rounded to an integer,
    at least 1 and at most m - 1 when both sets are non-empty (SRT Sec. 4). With m <= n this
    never exceeds the size of either set."""
    if num_labeled in (0, n):
        return global_batch_size if num_labeled else 0
    ml = int(np.floor(global_batch_size * num_labeled / n + 0.5))
    return min(max(ml, 1), global_batch_size - 1)


def unlabeled_rows(ds: Dataset) -> np.ndarray | None:
    """The examples stratified batches draw as their unlabeled part: the unlabeled ones (hidden
    labels), or a `PseudoLabeledDataset`'s pseudo-labeled ones; None for fully labeled data."""
    if ds.labeled is not None:
        return ~ds.labeled
    if isinstance(ds, PseudoLabeledDataset):
        return ds.pseudo
    return None


def split_per_batch(
    num_labeled: int, n: int, global_batch_size: int, unlabeled_fraction: float | None = None
) -> int:
    """Labeled examples in each global batch of ``m`` (the rest are unlabeled or pseudo-labeled):
    `labeled_per_batch` (in proportion), or ``m - round(unlabeled_fraction m)`` kept within
    [1, m - 1]. Raises when a set is smaller than its part of a batch."""
    if unlabeled_fraction is None:
        return labeled_per_batch(num_labeled, n, global_batch_size)
    if not 0.0 < unlabeled_fraction < 1.0:
        raise ValueError(f"unlabeled_fraction must be in (0, 1), got {unlabeled_fraction}")
    m_u = int(np.floor(global_batch_size * unlabeled_fraction + 0.5))
    m_l = global_batch_size - min(max(m_u, 1), global_batch_size - 1)
    if m_l > num_labeled or global_batch_size - m_l > n - num_labeled:
        raise ValueError(
            f"unlabeled_fraction={unlabeled_fraction} puts {m_l} labeled and "
            f"{global_batch_size - m_l} unlabeled examples in each batch of {global_batch_size}, "
            f"but there are {num_labeled} and {n - num_labeled}"
        )
    return m_l


def steps_per_epoch(n: int, global_batch_size: int) -> int:
    """Number of full global batches in an epoch of `n` examples (remainder dropped)."""
    if global_batch_size <= 0:
        raise ValueError(f"global_batch_size must be positive, got {global_batch_size}.")
    return n // global_batch_size


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of `epoch`: `np.random.default_rng([seed, epoch]).permutation(n)`."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def _layout(
    global_batch_size: int,
    process_index: int | None,
    process_count: int | None,
    local_device_count: int | None,
) -> tuple[int, int, int, int]:
    """Resolves (process_index, per_host, local_device_count, per_device) and validates."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    ldc = jax.local_device_count() if local_device_count is None else local_device_count
    if pc <= 0 or ldc <= 0 or not 0 <= pi < pc:
        raise ValueError(
            f"Invalid layout: process_index={pi}, process_count={pc}, local_device_count={ldc}."
        )
    if global_batch_size <= 0 or global_batch_size % (pc * ldc):
        raise ValueError(
            f"global_batch_size={global_batch_size} must be a positive multiple of "
            f"process_count * local_device_count = {pc} * {ldc} = {pc * ldc}."
        )
    per_host = global_batch_size // pc
    return pi, per_host, ldc, per_host // ldc


def _to_batch(
    ds: Dataset, indices: np.ndarray, ldc: int, per_device: int, mask_unlabeled: bool = False
) -> Batch:
    images = ds.images[indices].astype(np.float32) / np.float32(255.0)
    batch = {
        "image": images.reshape(ldc, per_device, *ds.image_shape),
        "label": ds.labels[indices].reshape(ldc, per_device),
    }
    if mask_unlabeled and ds.labeled is not None:
        labeled = ds.labeled[indices].reshape(ldc, per_device)
        batch["label"] = np.where(labeled, batch["label"], np.int32(UNLABELED)).astype(np.int32)
        batch["labeled"] = labeled
    return batch


def _stream_part(indices: np.ndarray, per_batch: int, seed: int, tag: int, step: int):
    """Batch `step`'s `per_batch` examples of an endless stream over `indices`: each cycle of
    `len(indices) // per_batch` batches takes them in the order of
    `default_rng([seed, tag, cycle]).permutation(len(indices))` (remainder dropped)."""
    cycle, b = divmod(step, len(indices) // per_batch)
    perm = np.random.default_rng([seed, tag, cycle]).permutation(len(indices))
    return indices[perm[b * per_batch : (b + 1) * per_batch]]


def stratified_indices(
    ds: Dataset,
    global_batch_size: int,
    seed: int,
    step: int,
    unlabeled_fraction: float | None = None,
) -> np.ndarray:
    """Dataset indices of global batch `step` of a dataset with unlabeled (or pseudo-labeled)
    examples (`unlabeled_rows`).

    m_L = `split_per_batch` labeled and m_U = m - m_L unlabeled examples, each set drawn as an
    endless stream reshuffled whenever it is used up (`_stream_part`, tags 1 and 2); the batch's
    m positions are then shuffled by `default_rng([seed, 3, step])`, so every device shard holds
    a mixture. An epoch is `steps_per_epoch(len(ds), m)` steps as for fully labeled data; as m_L
    is rounded (or set by `unlabeled_fraction`), one set may cycle faster than the epoch.
    """
    unlabeled = unlabeled_rows(ds)
    lab, unl = np.flatnonzero(~unlabeled), np.flatnonzero(unlabeled)
    m_l = split_per_batch(len(lab), len(ds), global_batch_size, unlabeled_fraction)
    indices = np.concatenate(
        [
            _stream_part(lab, m_l, seed, 1, step),
            _stream_part(unl, global_batch_size - m_l, seed, 2, step),
        ]
    )
    return indices[np.random.default_rng([seed, 3, step]).permutation(global_batch_size)]


def train_batches(
    ds: Dataset,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    local_device_count: int | None = None,
    unlabeled_fraction: float | None = None,
) -> Iterator[Batch]:
    """Yields this host's part of global training batches forever, from `start_step` on.

    Global step s is batch s % steps_per_epoch of epoch s // steps_per_epoch, whose order is
    `epoch_permutation(len(ds), seed, epoch)` (remainder dropped), so resuming at any step
    reproduces the uninterrupted stream exactly. Each batch is
    {"image": float32 [local_devices, per_device, H, W, C] in [0, 1],
     "label": int32 [local_devices, per_device]}.

    A dataset with unlabeled examples (`with_labeled_subset`) gives stratified batches instead
    (`stratified_indices`, same number of steps per epoch) with a bool "labeled" field, and label
    `UNLABELED` for the unlabeled examples. A `PseudoLabeledDataset` gives stratified batches of
    its labeled and pseudo-labeled examples, with every label and no "labeled" field.
    `unlabeled_fraction` (stratified batches only; None: in proportion) sets their unlabeled part.
    """
    pi, per_host, ldc, per_device = _layout(
        global_batch_size, process_index, process_count, local_device_count
    )
    spe = steps_per_epoch(len(ds), global_batch_size)
    if spe == 0:
        raise ValueError(
            f"Dataset {ds.name!r} has {len(ds)} examples, fewer than one global batch "
            f"of {global_batch_size}."
        )
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}.")
    unlabeled = unlabeled_rows(ds)
    if unlabeled is None and unlabeled_fraction is not None:
        raise ValueError(
            f"unlabeled_fraction={unlabeled_fraction} needs unlabeled or pseudo-labeled training "
            f"examples; every example of {ds.name!r} is labeled"
        )
    if unlabeled is not None:  # checks the split before the first batch is asked for
        split_per_batch(int(np.sum(~unlabeled)), len(ds), global_batch_size, unlabeled_fraction)

    def stratified() -> Iterator[Batch]:
        step = start_step
        while True:
            indices = stratified_indices(ds, global_batch_size, seed, step, unlabeled_fraction)
            own = indices[pi * per_host : (pi + 1) * per_host]
            yield _to_batch(ds, own, ldc, per_device, mask_unlabeled=True)
            step += 1

    if unlabeled is not None:
        return stratified()

    def generate() -> Iterator[Batch]:
        step, epoch, perm = start_step, -1, np.empty(0, np.int64)
        while True:
            if step // spe != epoch:
                epoch = step // spe
                perm = epoch_permutation(len(ds), seed, epoch)
            start = (step % spe) * global_batch_size + pi * per_host
            yield _to_batch(ds, perm[start : start + per_host], ldc, per_device)
            step += 1

    return generate()


def num_eval_batches(n: int, global_batch_size: int) -> int:
    """Number of (padded) global batches `eval_batches` yields for `n` examples."""
    return -(-n // global_batch_size)


def eval_batches(
    ds: Dataset,
    global_batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
    local_device_count: int | None = None,
) -> Iterator[Batch]:
    """Yields this host's part of fixed-shape global batches covering `ds` once, in order.

    The last global batch is padded (zero images, label 0); "mask" (float32, 1 for real
    examples, 0 for padding, [local_devices, per_device]) makes every example count exactly
    once. All hosts yield the same number of batches.
    """
    pi, per_host, ldc, per_device = _layout(
        global_batch_size, process_index, process_count, local_device_count
    )
    n = len(ds)

    def generate() -> Iterator[Batch]:
        for b in range(num_eval_batches(n, global_batch_size)):
            start = b * global_batch_size + pi * per_host
            indices = np.arange(start, start + per_host)
            valid = indices < n
            batch = _to_batch(ds, np.where(valid, indices, 0), ldc, per_device)
            batch["image"][~valid.reshape(ldc, per_device)] = 0.0
            batch["label"] = np.where(valid, batch["label"].reshape(-1), 0).reshape(ldc, per_device)
            batch["mask"] = valid.astype(np.float32).reshape(ldc, per_device)
            yield batch

    return generate()
