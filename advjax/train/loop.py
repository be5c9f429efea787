"""The training loop: data-parallel steps, validation, exact-resume checkpoints, JSONL metrics.

``train_and_evaluate(config, workdir)`` trains the configured model with the configured defense.
Rerunning the same command on the same ``workdir`` resumes from the latest checkpoint and ends with
the same parameters as an uninterrupted run: the data order, augmentation and attack randomness
are functions of ``(seed, step)`` only.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from advjax import defenses
from advjax.data import Dataset, load_dataset, split_validation, steps_per_epoch, train_batches
from advjax.eval import attack_from_config, evaluate_accuracy
from advjax.models import get_model, init_variables
from advjax.train import distributed
from advjax.train.checkpoint import Checkpointer, to_host
from advjax.train.metrics import MetricWriter
from advjax.train.optim import make_optimizer
from advjax.train.state import TrainState, create_train_state
from advjax.train.step import make_mesh, replicate, shard_batch, sharded_train_step


def _hashable(value: Any) -> Any:
    return tuple(_hashable(v) for v in value) if isinstance(value, list | tuple) else value


def build_model(config: ml_collections.ConfigDict):
    kwargs = {k: _hashable(v) for k, v in config.model.items() if k != "name"}
    return get_model(config.model.name, **kwargs)


def load_split(config: ml_collections.ConfigDict, split: str, data_dir: str | None = None):
    """Loads ``split`` of the configured dataset (``data.synthetic`` holds synthetic options)."""
    data = config.data
    source = data.get("source", "auto")
    kwargs = dict(data.get("synthetic", {})) if "synthetic" in (source, data.name) else {}
    data_dir = data_dir if data_dir is not None else (data.get("data_dir") or None)
    return load_dataset(data.name, split, data_dir, source, **kwargs)


def load_splits(config: ml_collections.ConfigDict) -> tuple[Dataset, Dataset | None]:
    """The training set and the held-out validation split carved from it."""
    data = config.data
    full = load_split(config, "train")
    if data.get("num_validation", 0) > 0:
        return split_validation(full, data.num_validation, config.seed)
    return full, None


def initial_state(config, model, image_shape, steps_per_epoch_: int):
    key = jax.random.key(config.seed)
    init_key, state_key = jax.random.split(key)
    variables = init_variables(model, init_key, image_shape)
    tx, schedule = make_optimizer(config.train, steps_per_epoch_)
    return create_train_state(variables, tx, state_key), tx, schedule


def _write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "config.json")
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if os.path.exists(path):
        with open(path) as f:
            previous = f.read()
        if previous != text:
            logging.warning("config differs from the one in %s; resuming with the new one", path)
    with open(path, "w") as f:
        f.write(text)


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, stop_after_steps: int | None = None
) -> TrainState:
    """Trains (or resumes) and returns the final host state.

    ``stop_after_steps`` ends the run right after that global step without saving anything more,
    as if the job had been killed there (used to test exact resumption).
    """
    distributed.maybe_initialize(config.get("distributed", {}))
    os.makedirs(workdir, exist_ok=True)
    _write_config(config, workdir)
    train_ds, val_ds = load_splits(config)
    model = build_model(config)
    tc = config.train
    spe = steps_per_epoch(len(train_ds), tc.batch_size)
    total_steps = int(tc.epochs * spe)
    state, tx, schedule = initial_state(config, model, train_ds.image_shape, spe)

    ckpt = Checkpointer(
        workdir,
        keep=tc.get("keep_checkpoints", 2),
        metric=config.validation.get("metric", "val_robust_accuracy"),
    )
    start = ckpt.latest_step()
    if start is not None:
        state = ckpt.restore(state)
        logging.info("resumed from %s at step %d", ckpt.latest.directory, start)
    start = int(state.step)

    mesh = make_mesh()
    step_fn = sharded_train_step(
        model,
        defenses.get_defense(config.defense, spe),
        tx,
        schedule,
        mesh,
        augment=config.data.get("augment", False),
    )
    val_attack = attack_from_config(config.validation.attack)
    writer = MetricWriter(workdir)
    batches = train_batches(train_ds, tc.batch_size, config.seed, start_step=start)
    device_state = replicate(state, mesh)
    log_every = tc.get("log_every", 50)
    ckpt_every = tc.get("checkpoint_every_steps", 0)
    last_step = total_steps if stop_after_steps is None else min(total_steps, stop_after_steps)
    show = jax.process_index() == 0 and tc.get("progress", True)
    bar = tqdm(total=total_steps, initial=start, desc="train", disable=not show, dynamic_ncols=True)
    epoch_start = time.time()
    for step in range(start + 1, last_step + 1):
        device_state, metrics = step_fn(device_state, shard_batch(next(batches), mesh))
        bar.update(1)
        epoch_end = step % spe == 0
        if step % log_every == 0 or epoch_end:
            scalars = jax.device_get(metrics)
            bar.set_postfix(
                {
                    k: f"{float(v):.4g}"
                    for k, v in scalars.items()
                    if k in ("loss", "adv_accuracy", "clean_accuracy")
                }
            )
            writer.write(step, {**scalars, "epoch": step / spe})
        if epoch_end:
            epoch_time = time.time() - epoch_start
            host_state = to_host(device_state)
            val_metrics = None
            if val_ds is not None and step // spe % config.validation.get("every_epochs", 1) == 0:
                val_metrics = validate(config, model, host_state, val_ds, val_attack, step, mesh)
                writer.write(
                    step, {**val_metrics, "epoch": step // spe, "epoch_time_s": epoch_time}
                )
                bar.write(
                    f"epoch {step // spe}: "
                    + json.dumps({k: round(v, 4) for k, v in val_metrics.items()})
                    + f" ({epoch_time:.1f}s)"
                )
            ckpt.save(step, host_state, val_metrics)
            epoch_start = time.time()
        elif ckpt_every and step % ckpt_every == 0:
            ckpt.save(step, to_host(device_state))
    bar.close()
    final = to_host(device_state)
    if stop_after_steps is None or stop_after_steps >= total_steps:
        ckpt.save(last_step, final)
    ckpt.wait()
    ckpt.close()
    return final


def validate(config, model, state: TrainState, val_ds: Dataset, attack, step: int, mesh):
    """Clean and robust accuracy on (a prefix of) the validation split."""
    vc = config.validation
    num = vc.get("num_examples", 0) or len(val_ds)
    subset = val_ds.take(np.arange(min(num, len(val_ds))))
    key = jax.random.fold_in(jax.random.key(config.seed + 1), step)
    result = evaluate_accuracy(
        model, state.variables, subset, attack, vc.get("batch_size", 500), key, mesh
    )
    return {
        "val_clean_accuracy": result["clean_accuracy"],
        "val_robust_accuracy": result.get("robust_accuracy", result["clean_accuracy"]),
    }
