"""The training loop: data-parallel steps, validation, exact-resume checkpoints, JSONL metrics.

``train_and_evaluate(config, workdir)`` trains the configured model with the configured defense.
Rerunning the same command on the same ``workdir`` resumes from the latest checkpoint and ends with
the same parameters as an uninterrupted run: the data order, augmentation and attack randomness
are functions of ``(seed, step)`` only, and the state of the validation-guided schedule lives in
the checkpointed optimiser state.

Optional features (config fields, defaults in brackets):

* ``train.plateau = dict(enabled=True, patience=2, factor=5.0, stop_patience=10, min_delta=0.0,
  max_reductions=0, metric="")``: ATLAS App. B's validation-guided schedule
  (``advjax.train.schedules``), guided by ``metric`` (empty: ``validation.metric``); absent, empty
  or ``enabled=False``: off. Needs a validation split.
* ``data.num_labeled`` [0: all labeled]: only this many training examples keep their labels; the
  others are unlabeled data, mixed into every batch in proportion (SRT Sec. 4). Needs a defense
  that uses unlabeled data (``rt``, ``srt``, ``fast_srt``), or ``data.labeled_only`` [False]:
  train on the labeled examples alone (SRT's supervised baselines; ``advjax.data.labeled_part``).
* Catastrophic-overfitting monitor after each validation (ATLAS Sec. 6, App. E;
  ``advjax.train.monitor``): ``validation.co_drop`` [0.1], ``validation.co_jac_factor`` [10],
  ``validation.jac_examples`` [100, 0: no Jacobian estimate].

Logged besides the defense's metrics: ``learning_rate`` (effective, including the plateau scale),
``lr_scale`` (with a plateau rule), ``eps_scale`` (epsilon warm-up factor of the last step's
attack), ``time_per_batch_s`` (wall time per step over the logging interval, compilation,
validation and checkpointing excluded); per validation ``train_jac_norm`` (epoch mean of the
defense's ``jac_norm``, when it reports one) or ``val_jac_norm`` (estimate at the defense's
adversaries of the first ``jac_examples`` validation images), ``co_robust_drop``,
``co_jac_ratio``, ``catastrophic_overfitting`` and the plateau counters.
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
from advjax.data import (
    Dataset,
    labeled_part,
    load_dataset,
    split_validation,
    steps_per_epoch,
    train_batches,
    with_labeled_subset,
)
from advjax.eval import attack_from_config, evaluate_accuracy
from advjax.models import get_model, init_variables
from advjax.train import distributed, monitor
from advjax.train.checkpoint import Checkpointer, to_host
from advjax.train.metrics import MetricWriter, read_metrics
from advjax.train.optim import get_plateau_state, make_optimizer, plateau_rule, set_plateau_state
from advjax.train.schedules import PlateauState
from advjax.train.state import TrainState, create_train_state
from advjax.train.step import make_mesh, replicate, shard_batch, sharded_train_step

VALIDATION_METRICS = ("val_robust_accuracy", "val_clean_accuracy")


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
    """The training set and the held-out validation split carved from it.

    With ``data.num_labeled > 0``, only that many (seeded choice) of the remaining training
    examples stay labeled (``advjax.data.with_labeled_subset``); validation keeps its labels.
    With ``data.labeled_only`` the training set is those labeled examples alone.
    """
    data = config.data
    train, val = load_split(config, "train"), None
    if data.get("num_validation", 0) > 0:
        train, val = split_validation(train, data.num_validation, config.seed)
    num_labeled = data.get("num_labeled", 0) or 0
    labeled_only = data.get("labeled_only", False)
    if labeled_only and not num_labeled:
        raise ValueError(
            "data.labeled_only=True needs data.num_labeled > 0 (how many training images keep "
            "their labels); with every image labeled there is nothing to leave out"
        )
    if num_labeled:
        train = with_labeled_subset(train, num_labeled, config.seed)
        if labeled_only:
            train = labeled_part(train)
    return train, val


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


def _defense_attacks(defense: Any) -> list[Any]:
    """The attacks inside a defense (``attack`` fields, through ``WeightedSum`` terms)."""
    if hasattr(defense, "terms"):
        return [a for _, term in defense.terms for a in _defense_attacks(term)]
    attack = getattr(defense, "attack", None)
    return [] if attack is None else [attack]


def _eps_warmup_steps(defense: Any) -> int:
    if hasattr(defense, "terms"):
        return max([_eps_warmup_steps(term) for _, term in defense.terms] + [0])
    return int(getattr(defense, "eps_warmup_steps", 0) or 0)


def eps_scale(warmup_steps: int, step: int) -> float:
    """The epsilon warm-up factor of train step ``step`` (0-based, as ``defense.at_step``)."""
    return min(1.0, step / warmup_steps) if warmup_steps else 1.0


class _OverfitMonitor:
    """Catastrophic-overfitting checks after each validation (``advjax.train.monitor``).

    Jacobian value: the epoch mean of the defense's per-step ``jac_norm`` metric when it reports
    one (``train_jac_norm``), else the estimate at the defense's (warmed-up) adversaries of the
    first ``validation.jac_examples`` validation images (``val_jac_norm``; at the clean images
    for a defense without an attack). The state is rebuilt from ``metrics.jsonl`` on resume.
    """

    def __init__(self, config, model, val_ds, defense, warmup_steps: int, workdir: str, start):
        vc = config.validation
        self.detector = monitor.OverfitDetector(
            vc.get("co_drop", 0.1), vc.get("co_jac_factor", 10.0)
        )
        self.seed, self.model, self.warmup_steps = config.seed, model, warmup_steps
        found = _defense_attacks(defense)
        self.attack = found[0] if found else None
        num = min(int(vc.get("jac_examples", 100)), len(val_ds)) if val_ds is not None else 0
        subset = val_ds.take(np.arange(num)) if num else None
        self.jac_batch = (
            None
            if subset is None
            else (subset.images.astype(np.float32) / np.float32(255.0), subset.labels)
        )
        self.state = self._restore(workdir, start)
        self.jac_sum, self.jac_steps = None, 0

    @staticmethod
    def _restore(workdir: str, start: int) -> monitor.OverfitState:
        state = monitor.OverfitState()
        if not start or not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
            return state
        for record in read_metrics(workdir):
            if record["step"] > start or "val_robust_accuracy" not in record:
                continue
            state = monitor.OverfitState(
                max(state.best_robust, record["val_robust_accuracy"]),
                record.get("train_jac_norm", record.get("val_jac_norm", state.last_jac)),
                bool(record.get("catastrophic_overfitting", 0.0)),
            )
        return state

    def observe(self, metrics: dict[str, jax.Array]) -> None:
        """Accumulates the defense's ``jac_norm`` of a step (on device, without waiting)."""
        if "jac_norm" in metrics:
            value = metrics["jac_norm"]
            self.jac_sum = value if self.jac_sum is None else self.jac_sum + value
            self.jac_steps += 1

    def check(self, variables, robust_accuracy: float, step: int, epoch: int, bar) -> dict:
        record: dict[str, float] = {}
        jac = None
        if self.jac_steps:
            jac = float(jax.device_get(self.jac_sum)) / self.jac_steps
            record["train_jac_norm"] = jac
        elif self.jac_batch is not None:
            jac = monitor.jacobian_norm_at_adversary(
                self.model,
                variables,
                *self.jac_batch,
                self.attack,
                jax.random.fold_in(jax.random.key(self.seed + 2), step),
                budget_scale=eps_scale(self.warmup_steps, step - 1) if self.warmup_steps else None,
            )
            record["val_jac_norm"] = jac
        self.jac_sum, self.jac_steps = None, 0
        self.state, co_metrics = monitor.co_update(self.state, robust_accuracy, jac, self.detector)
        record.update(co_metrics)
        if self.state.flagged and jax.process_index() == 0:
            message = (
                f"catastrophic overfitting suspected at epoch {epoch}: validation robust "
                f"accuracy {robust_accuracy:.4f} is {co_metrics['co_robust_drop']:.4f} below "
                "its best"
            )
            if "co_jac_ratio" in co_metrics:
                message += f"; Jacobian-norm estimate x{co_metrics['co_jac_ratio']:.3g} in an epoch"
            logging.warning(message)
            bar.write("WARNING: " + message)
        return record


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, stop_after_steps: int | None = None
) -> TrainState:
    """Trains (or resumes) and returns the final host state.

    ``stop_after_steps`` ends the run right after that global step without saving anything more,
    as if the job had been killed there (used to test exact resumption). A plateau rule's
    ``stop_patience`` ends it early (after saving), and a rerun of a run it ended does not train.
    """
    distributed.maybe_initialize(config.get("distributed", {}))
    os.makedirs(workdir, exist_ok=True)
    _write_config(config, workdir)
    train_ds, val_ds = load_splits(config)
    model = build_model(config)
    tc = config.train
    spe = steps_per_epoch(len(train_ds), tc.batch_size)
    total_steps = int(tc.epochs * spe)
    defense = defenses.get_defense(config.defense, spe)
    if train_ds.labeled is not None and not getattr(defense, "supports_unlabeled", False):
        raise ValueError(
            f"data.num_labeled={config.data.num_labeled} leaves unlabeled training examples, but "
            f"defense {config.defense.name!r} trains on every example's label; use a "
            "semi-supervised defense (rt, srt, fast_srt), data.labeled_only=True (train on the "
            "labeled examples alone) or data.num_labeled=0"
        )
    plateau = plateau_rule(tc)
    vc = config.validation
    plateau_metric = (dict(tc.get("plateau", None) or {}).get("metric")) or vc.get(
        "metric", "val_robust_accuracy"
    )
    if plateau is not None and val_ds is None:
        raise ValueError("train.plateau is guided by validation: set data.num_validation > 0")
    if plateau is not None and plateau_metric not in VALIDATION_METRICS:
        raise ValueError(
            f"unknown plateau metric {plateau_metric!r}; valid: {', '.join(VALIDATION_METRICS)}"
        )
    state, tx, schedule = initial_state(config, model, train_ds.image_shape, spe)

    ckpt = Checkpointer(
        workdir, keep=tc.get("keep_checkpoints", 2), metric=vc.get("metric", "val_robust_accuracy")
    )
    start = ckpt.latest_step()
    if start is not None:
        state = ckpt.restore(state)
        logging.info("resumed from %s at step %d", ckpt.latest.directory, start)
    start = int(state.step)

    mesh = make_mesh()
    step_fn = sharded_train_step(
        model, defense, tx, schedule, mesh, augment=config.data.get("augment", False)
    )
    val_attack = attack_from_config(vc.attack)
    writer = MetricWriter(workdir)
    batches = train_batches(train_ds, tc.batch_size, config.seed, start_step=start)
    device_state = replicate(state, mesh)
    log_every = tc.get("log_every", 50)
    ckpt_every = tc.get("checkpoint_every_steps", 0)
    last_step = total_steps if stop_after_steps is None else min(total_steps, stop_after_steps)
    show = jax.process_index() == 0 and tc.get("progress", True)
    bar = tqdm(total=total_steps, initial=start, desc="train", disable=not show, dynamic_ncols=True)

    plateau_state = get_plateau_state(state.opt_state)
    lr_scale = 1.0 if plateau_state is None else float(plateau_state.lr_scale)
    if plateau is not None and plateau.should_stop(plateau_state):
        bar.write(f"plateau: training already stopped at step {start} (no improvement)")
        last_step = start
    warmup_steps = _eps_warmup_steps(defense)
    has_attack = bool(_defense_attacks(defense))
    overfit = _OverfitMonitor(config, model, val_ds, defense, warmup_steps, workdir, start)
    timer = monitor.StepTimer()

    epoch_start = time.time()
    for step in range(start + 1, last_step + 1):
        device_state, metrics = step_fn(device_state, shard_batch(next(batches), mesh))
        if step == start + 1:
            timer.start(metrics)  # the first step compiles: not timed
        else:
            timer.step()
        overfit.observe(metrics)
        bar.update(1)
        epoch_end = step % spe == 0
        if step % log_every == 0 or epoch_end:
            per_batch = timer.read(metrics)
            scalars = dict(jax.device_get(metrics))
            bar.set_postfix(
                {
                    k: f"{float(v):.4g}"
                    for k, v in scalars.items()
                    if k in ("loss", "adv_accuracy", "clean_accuracy")
                }
            )
            extra = {"epoch": step / spe}
            if "learning_rate" in scalars:
                extra["learning_rate"] = float(scalars["learning_rate"]) * lr_scale
            if plateau is not None:
                extra["lr_scale"] = lr_scale
            if has_attack:
                extra["eps_scale"] = eps_scale(warmup_steps, step - 1)
            if per_batch is not None:
                extra["time_per_batch_s"] = per_batch
            writer.write(step, {**scalars, **extra})
        if epoch_end:
            timer.pause(device_state)
            epoch_time = time.time() - epoch_start
            host_state = to_host(device_state)
            val_metrics = None
            stop = False
            if val_ds is not None and step // spe % vc.get("every_epochs", 1) == 0:
                val_metrics = validate(config, model, host_state, val_ds, val_attack, step, mesh)
                record = {**val_metrics, "epoch": step // spe, "epoch_time_s": epoch_time}
                record.update(
                    overfit.check(
                        host_state.variables,
                        val_metrics["val_robust_accuracy"],
                        step,
                        step // spe,
                        bar,
                    )
                )
                if plateau is not None:
                    host_state, plateau_state, stop = _plateau_step(
                        plateau, host_state, val_metrics[plateau_metric], step // spe, bar
                    )
                    lr_scale = float(plateau_state.lr_scale)
                    device_state = device_state.replace(
                        opt_state=set_plateau_state(
                            device_state.opt_state, replicate(plateau_state, mesh)
                        )
                    )
                    record.update(
                        lr_scale=lr_scale,
                        plateau_best=float(plateau_state.best),
                        plateau_since_best=int(plateau_state.since_best),
                        plateau_reductions=int(plateau_state.reductions),
                        plateau_stop=float(stop),
                    )
                writer.write(step, record)
                bar.write(
                    f"epoch {step // spe}: "
                    + json.dumps({k: round(v, 4) for k, v in val_metrics.items()})
                    + f" ({epoch_time:.1f}s)"
                )
            ckpt.save(step, host_state, val_metrics)
            if stop:
                bar.write(
                    f"plateau: no improvement of {plateau_metric} for {plateau.stop_patience} "
                    f"validations; training stops at epoch {step // spe}"
                )
                break
            epoch_start = time.time()
            timer.start()
        elif ckpt_every and step % ckpt_every == 0:
            timer.pause(device_state)
            ckpt.save(step, to_host(device_state))
            timer.start()
    bar.close()
    final = to_host(device_state)
    if stop_after_steps is None or stop_after_steps >= total_steps:
        ckpt.save(int(final.step), final)
    ckpt.wait()
    ckpt.close()
    return final


def _plateau_step(plateau, host_state: TrainState, metric: float, epoch: int, bar):
    """Applies the plateau rule to a validation result; returns (state, plateau state, stop)."""
    old = get_plateau_state(host_state.opt_state)
    new = plateau.update(old, metric)
    new = PlateauState(*(np.asarray(v, np.asarray(o).dtype) for v, o in zip(new, old, strict=True)))
    if int(new.reductions) > int(old.reductions):
        bar.write(
            f"plateau: no improvement for {plateau.patience} validations at epoch {epoch}; "
            f"learning rate divided by {plateau.factor:g} (scale {float(new.lr_scale):.4g})"
        )
    state = host_state.replace(opt_state=set_plateau_state(host_state.opt_state, new))
    return state, new, plateau.should_stop(new)


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
