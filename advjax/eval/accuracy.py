"""Clean and robust accuracy of a model over a dataset, data parallel over all devices."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
from tqdm import tqdm

from advjax import attacks
from advjax.data import Dataset, eval_batches, num_eval_batches
from advjax.train.step import make_mesh, replicate, shard_batch, sharded_eval_step


def attack_from_config(cfg: Any) -> attacks.Attack | None:
    """Builds an attack from ``{name, restarts, **hyperparameters}`` (``name: none`` -> None)."""
    params = dict(cfg)
    name = params.pop("name")
    restarts = int(params.pop("restarts", 1))
    if name in (None, "none", "clean"):
        return None
    attack = attacks.get_attack(name, **params)
    return attacks.restarts(attack, restarts) if restarts > 1 else attack


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
