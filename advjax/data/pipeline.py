"""Deterministic, resumable, host-sharded batching for data-parallel training and evaluation.

Layout: a global batch is split into `process_count` contiguous per-host slices; each host
reshapes its slice to [local_device_count, per_device, ...], ready for `jax.pmap` (or for
`jax.make_array_from_process_local_data` after a reshape).
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np

from advjax.data.dataset import Dataset

Batch = dict[str, np.ndarray]


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


def _to_batch(ds: Dataset, indices: np.ndarray, ldc: int, per_device: int) -> Batch:
    images = ds.images[indices].astype(np.float32) / np.float32(255.0)
    return {
        "image": images.reshape(ldc, per_device, *ds.image_shape),
        "label": ds.labels[indices].reshape(ldc, per_device),
    }


def train_batches(
    ds: Dataset,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    local_device_count: int | None = None,
) -> Iterator[Batch]:
    """Yields this host's part of global training batches forever, from `start_step` on.

    Global step s is batch s % steps_per_epoch of epoch s // steps_per_epoch, whose order is
    `epoch_permutation(len(ds), seed, epoch)` (remainder dropped), so resuming at any step
    reproduces the uninterrupted stream exactly. Each batch is
    {"image": float32 [local_devices, per_device, H, W, C] in [0, 1],
     "label": int32 [local_devices, per_device]}.
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
