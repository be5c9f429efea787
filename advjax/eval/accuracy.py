"""Clean and robust accuracy of a model over a dataset, data parallel over all devices."""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from advjax import attacks, validation
from advjax.data import Dataset, eval_batches, num_eval_batches
from advjax.models import make_model_fn
from advjax.sharding import AXIS, example_keys, make_mesh, replicate, shard_batch


@validation.value_checks(False)  # the Dataset checked its images and labels
def eval_step(
    variables: Any,
    batch: dict[str, jax.Array],
    key: jax.Array,
    *,
    model: nn.Module,
    attack: attacks.Attack | None,
) -> dict[str, jax.Array]:
    """Summed clean and adversarial correctness over the (masked) global batch."""
    model_fn = make_model_fn(model)
    x, y, mask = batch["image"], batch["label"], batch["mask"]
    clean = jnp.argmax(model_fn(variables, x), -1) == y
    out = {"count": jnp.sum(mask), "clean_correct": jnp.sum(mask * clean)}
    if attack is not None:
        keys = example_keys(key, y.shape[0])
        x_adv = attack(model_fn, variables, x, y, keys)
        robust = (jnp.argmax(model_fn(variables, x_adv), -1) == y) & clean
        out["robust_correct"] = jnp.sum(mask * robust)
    return jax.lax.psum(out, AXIS)


@functools.cache
def sharded_eval_step(model, attack, mesh: Mesh):
    """``jit(shard_map(eval_step))`` returning global sums of clean/robust correctness.

    Cached on its (hashable) arguments, so validation after every epoch reuses one compilation.
    """
    fn = functools.partial(eval_step, model=model, attack=attack)
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(AXIS), P()), out_specs=P())
    return jax.jit(mapped)


def evaluate_accuracy(
    model: nn.Module,
    variables: Any,
    dataset: Dataset,
    attack: attacks.Attack | None,
    batch_size: int,
    key: jax.Array,
    mesh=None,
    progress: bool = False,
    desc: str = "eval",
) -> dict[str, float]:
    """Clean accuracy and accuracy under ``attack`` (robust = correct on clean and adversarial).

    Every example counts once (the last batch is padded and masked); per-example attack keys are
    ``fold_in(fold_in(key, batch_index), position)``.
    """
    mesh = make_mesh() if mesh is None else mesh
    step = sharded_eval_step(model, attack, mesh)
    variables = replicate(variables, mesh)
    totals: dict[str, float] = {}
    batches = eval_batches(dataset, batch_size)
    total = num_eval_batches(len(dataset), batch_size)
    show = progress and jax.process_index() == 0
    for i, batch in enumerate(tqdm(batches, total=total, desc=desc, disable=not show, leave=False)):
        out = jax.device_get(step(variables, shard_batch(batch, mesh), jax.random.fold_in(key, i)))
        for k, v in out.items():
            totals[k] = totals.get(k, 0.0) + float(np.asarray(v))
    count = totals["count"]
    result = {"num_examples": int(count), "clean_accuracy": totals["clean_correct"] / count}
    if attack is not None:
        result["robust_accuracy"] = totals["robust_correct"] / count
    return result
