"""The training loop: data-parallel steps, then at each epoch's end validate, monitor, schedule,
log and checkpoint. Every run resumes exactly.

``train_and_evaluate(config, workdir)`` trains the configured model with the configured defense.
Rerunning the same command on the same ``workdir`` resumes from the latest checkpoint and ends with
the same parameters as an uninterrupted run: the data order, augmentation and attack randomness
are functions of ``(seed, step)`` only, and the states of the defense and of the
validation-guided schedule live in the checkpointed ``TrainState``.

The loop reads top to bottom as a sequence of small hooks::

    for step in steps:
        state, metrics = train_step(state, batch)        # advjax.train.step
        log.step(...)                                     # progress bar, metrics.jsonl
        if end of epoch:
            record = validation(...)                      # clean / robust validation accuracy
            record |= overfit.check(...)                  # catastrophic-overfitting monitor
            record |= schedule.update(...)                # ATLAS App. B plateau rule
            log.epoch(...); checkpoints.save(...)
        elif checkpoints.due(step): checkpoints.save(...)

Optional features (config fields, defaults in brackets):

* ``train.plateau = dict(enabled=True, patience=2, factor=5.0, stop_patience=10, min_delta=0.0,
  max_reductions=0, metric="")``: ATLAS App. B's validation-guided schedule
  (``advjax.train.schedules``), guided by ``metric`` (empty: ``validation.metric``); absent, empty
  or ``enabled=False``: off. Needs a validation split.
* ``data.num_labeled`` [0: all labeled]: only this many training examples keep their labels; the
  others are unlabeled data, mixed into every batch in proportion (SRT Sec. 4). Needs a defense
  that uses unlabeled data (``rt``, ``srt``, ``fast_srt``), or ``data.labeled_only`` [False]:
  train on the labeled examples alone (SRT's supervised baselines; ``advjax.data.labeled_part``).
  Data steps on the unlabeled pool (``advjax.experiment.unlabeled``):
  ``data.num_unlabeled`` [0: all] keeps a seeded choice of that many unlabeled examples (SRT
  Sec. 4.5); ``data.pseudo_labels_from`` [""] labels them once with the predictions of the model
  trained in that workdir (its best checkpoint), for the self-training defenses (``rst``, ``uat``
  FT / UAT++); ``data.unlabeled_fraction`` [0: in proportion] sets the unlabeled part of each batch
  (RST's ``unsup_fraction``).
* ``ensemble.members`` [1]: train that many copies of the model in one step
  (``advjax.models.Ensemble``), each with the defense unless it couples its members.
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

from advjax import attacks
from advjax.data import Dataset, steps_per_epoch, train_batches
from advjax.eval import evaluate_accuracy
from advjax.experiment.builders import build_defense, build_model, initial_state, load_splits
from advjax.experiment.unlabeled import unlabeled_data
from advjax.experiment.workdir import write_config
from advjax.sharding import make_mesh, replicate, shard_batch
from advjax.train import distributed, monitor
from advjax.train.checkpoint import Checkpointer, to_host
from advjax.train.metrics import MetricWriter, read_metrics
from advjax.train.optim import plateau_rule
from advjax.train.schedules import PlateauState
from advjax.train.state import TrainState
from advjax.train.step import sharded_train_step

VALIDATION_METRICS = ("val_robust_accuracy", "val_clean_accuracy")


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
    write_config(config, workdir)
    tc, vc = config.train, config.validation
    checkpoints = _Checkpoints(workdir, tc, vc)  # fails here when they cannot be written
    train_ds, val_ds = load_splits(config)
    train_ds = unlabeled_data(config, train_ds)
    model = build_model(config)
    spe = steps_per_epoch(len(train_ds), tc.batch_size)
    total_steps = int(tc.epochs * spe)
    defense = build_defense(config, model, spe, train_ds)
    schedule = _PlateauSchedule(tc, vc, val_ds)
    state, tx, lr_schedule = initial_state(
        config, model, train_ds.image_shape, spe, defense.init_state()
    )
    state = checkpoints.restore(state)
    start = int(state.step)

    mesh = make_mesh()
    step_fn = sharded_train_step(
        model, defense, tx, lr_schedule, mesh, augment=config.data.get("augment", False)
    )
    fraction = config.data.get("unlabeled_fraction", 0.0) or None
    batches = train_batches(
        train_ds, tc.batch_size, config.seed, start_step=start, unlabeled_fraction=fraction
    )
    log = _Log(workdir, tc, total_steps, start, spe, defense)
    validation = _Validation(config, model, val_ds, spe, mesh)
    overfit = _OverfitMonitor(config, model, val_ds, defense, workdir, start)
    last_step = total_steps if stop_after_steps is None else min(total_steps, stop_after_steps)
    if start:
        log.write(f"resumed from the checkpoint of step {start}")
    if schedule.stopped(state):
        log.write(f"plateau: training already stopped at step {start} (no improvement)")
        last_step = start

    device_state = replicate(state, mesh)
    for step in range(start + 1, last_step + 1):
        device_state, metrics = step_fn(device_state, shard_batch(next(batches), mesh))
        log.step(step, metrics, device_state)
        overfit.observe(metrics)
        if step % spe == 0:  # end of an epoch
            log.pause(device_state)
            host_state = to_host(device_state)
            record = validation(host_state, step)
            stop = False
            if record:
                record |= overfit.check(host_state.variables, record, step, log)
                host_state, stop, plateau_record = schedule.update(host_state, record, log)
                record |= plateau_record
                device_state = device_state.replace(
                    schedule_state=replicate(host_state.schedule_state, mesh)
                )
            log.epoch(step, record)
            checkpoints.save(step, host_state, validation.metrics(record))
            if stop:
                break
            log.resume()
        elif checkpoints.due(step):
            log.pause(device_state)
            checkpoints.save(step, to_host(device_state))
            log.resume()
    log.close()
    final = to_host(device_state)
    checkpoints.finish(final, stop_after_steps is None or stop_after_steps >= total_steps)
    return final


# ----------------------------------------------------------------------------------------------
# Hooks


class _Log:
    """Progress bar, per-step metrics every ``train.log_every`` steps and at epoch ends, the
    per-epoch line, and the step timer (compilation, validation and checkpoints not timed)."""

    SHOWN = ("loss", "adv_accuracy", "clean_accuracy")

    def __init__(self, workdir, tc, total_steps: int, start: int, spe: int, defense):
        self.writer = MetricWriter(workdir)
        self.every = tc.get("log_every", 50)
        self.spe, self.start, self.defense = spe, start, defense
        self.has_attack = bool(defense.attacks)
        self.plateau = plateau_rule(tc) is not None
        show = jax.process_index() == 0 and tc.get("progress", True)
        self.bar = tqdm(
            total=total_steps, initial=start, desc="train", disable=not show, dynamic_ncols=True
        )
        self.timer = monitor.StepTimer()
        self.epoch_start = time.time()

    def step(self, step: int, metrics: dict, device_state) -> None:
        if step == self.start + 1:
            self.timer.start(metrics)  # the first step compiles: not timed
        else:
            self.timer.step()
        self.bar.update(1)
        if step % self.every and step % self.spe:
            return
        per_batch = self.timer.read(metrics)
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items() if k in self.SHOWN})
        extra: dict[str, float] = {"epoch": step / self.spe}
        if self.plateau:
            extra["lr_scale"] = float(device_state.schedule_state.lr_scale)
        if self.has_attack:
            extra["eps_scale"] = float(self.defense.ramp(step - 1))
        if per_batch is not None:
            extra["time_per_batch_s"] = per_batch
        self.writer.write(step, {**scalars, **extra})

    def epoch(self, step: int, record: dict[str, float]) -> None:
        epoch_time = time.time() - self.epoch_start
        if not record:
            return
        self.writer.write(step, {**record, "epoch": step // self.spe, "epoch_time_s": epoch_time})
        shown = {k: round(v, 4) for k, v in record.items() if k in VALIDATION_METRICS}
        self.write(f"epoch {step // self.spe}: {json.dumps(shown)} ({epoch_time:.1f}s)")

    def write(self, message: str) -> None:
        self.bar.write(message)

    def pause(self, device_state) -> None:
        self.timer.pause(device_state)

    def resume(self) -> None:
        self.epoch_start = time.time()
        self.timer.start()

    def close(self) -> None:
        self.bar.close()


class _Validation:
    """Clean and robust accuracy on (a prefix of) the validation split under
    ``validation.attack``, every ``validation.every_epochs`` epochs (``{}`` otherwise)."""

    def __init__(self, config, model, val_ds: Dataset | None, spe: int, mesh):
        self.vc, self.seed, self.model, self.mesh = config.validation, config.seed, model, mesh
        self.spe, self.every = spe, self.vc.get("every_epochs", 1)
        self.attack = attacks.build(self.vc.attack)
        self.subset = None
        if val_ds is not None:
            num = self.vc.get("num_examples", 0) or len(val_ds)
            self.subset = val_ds.take(np.arange(min(num, len(val_ds))))

    def __call__(self, state: TrainState, step: int) -> dict[str, float]:
        epoch = step // self.spe
        if self.subset is None or epoch % self.every:
            return {}
        key = jax.random.fold_in(jax.random.key(self.seed + 1), step)
        result = evaluate_accuracy(
            self.model,
            state.variables,
            self.subset,
            self.attack,
            self.vc.get("batch_size", 500),
            key,
            self.mesh,
        )
        return {
            "val_clean_accuracy": result["clean_accuracy"],
            "val_robust_accuracy": result.get("robust_accuracy", result["clean_accuracy"]),
            "epoch": epoch,
        }

    @staticmethod
    def metrics(record: dict[str, float]) -> dict[str, float] | None:
        """The validation metrics of a record (for the best checkpoint), None without any."""
        found = {k: v for k, v in record.items() if k in VALIDATION_METRICS}
        return found or None


class _PlateauSchedule:
    """ATLAS App. B's validation-guided rule on ``TrainState.schedule_state``
    (``advjax.train.schedules``): divide the learning rate after ``patience`` validations without
    improvement, stop after ``stop_patience``."""

    def __init__(self, tc, vc, val_ds: Dataset | None):
        self.rule = plateau_rule(tc)
        settings = dict(tc.get("plateau", None) or {})
        self.metric = settings.get("metric") or vc.get("metric", "val_robust_accuracy")
        if self.rule is None:
            return
        if val_ds is None:
            raise ValueError("train.plateau is guided by validation: set data.num_validation > 0")
        if self.metric not in VALIDATION_METRICS:
            raise ValueError(
                f"unknown plateau metric {self.metric!r}; valid: {', '.join(VALIDATION_METRICS)}"
            )

    def stopped(self, state: TrainState) -> bool:
        return self.rule is not None and self.rule.should_stop(state.schedule_state)

    def update(self, state: TrainState, record: dict[str, float], log: _Log):
        """``(state, stop, record)`` after a validation."""
        if self.rule is None:
            return state, False, {}
        old = state.schedule_state
        new = self.rule.update(old, record[self.metric])
        new = PlateauState(
            *(np.asarray(v, np.asarray(o).dtype) for v, o in zip(new, old, strict=True))
        )
        epoch = record.get("epoch")
        if int(new.reductions) > int(old.reductions):
            log.write(
                f"plateau: no improvement for {self.rule.patience} validations at epoch {epoch}; "
                f"learning rate divided by {self.rule.factor:g} (scale {float(new.lr_scale):.4g})"
            )
        stop = self.rule.should_stop(new)
        if stop:
            log.write(
                f"plateau: no improvement of {self.metric} for {self.rule.stop_patience} "
                f"validations; training stops at epoch {epoch}"
            )
        record = dict(
            lr_scale=float(new.lr_scale),
            plateau_best=float(new.best),
            plateau_since_best=int(new.since_best),
            plateau_reductions=int(new.reductions),
            plateau_stop=float(stop),
        )
        return state.replace(schedule_state=new), stop, record


class _Checkpoints:
    """Orbax checkpoints at every epoch end (with the validation metrics, for the best one),
    every ``train.checkpoint_every_steps`` steps and at the end; restores the latest.

    Fails at the start when the checkpoint directories cannot be written. On restore, a corrupt
    latest checkpoint is moved aside and training resumes from the newest intact one, and a
    corrupt best checkpoint is rewritten (or moved aside): see ``advjax.train.checkpoint``."""

    def __init__(self, workdir: str, tc, vc):
        self.workdir = workdir
        self.ckpt = Checkpointer(
            workdir,
            keep=tc.get("keep_checkpoints", 2),
            metric=vc.get("metric", "val_robust_accuracy"),
            create=True,
        )
        self.every = tc.get("checkpoint_every_steps", 0)
        self._closing_on_error(self.ckpt.check_writable)

    def _closing_on_error(self, fn, *args):
        """``fn(*args)``; closes the checkpoint managers when it raises (training then ends)."""
        try:
            return fn(*args)
        except BaseException:
            self.ckpt.close()
            raise

    def restore(self, state: TrainState) -> TrainState:
        return self._closing_on_error(self._restore, state)

    def _restore(self, state: TrainState) -> TrainState:
        if self.ckpt.latest_step() is not None:
            step, state = self.ckpt.load(state, repair=True)
            logging.info("resumed from %s at step %d", self.ckpt.latest_dir, step)
        self.ckpt.check_best(state, self._logged_metrics)
        return state

    def _logged_metrics(self, step: int) -> dict[str, float] | None:
        """The validation metrics logged at ``step`` (to rewrite a corrupt best checkpoint)."""
        try:
            records = read_metrics(self.workdir)
        except (OSError, ValueError):
            return None
        found = None
        for record in records:
            if record.get("step") == step and any(k in record for k in VALIDATION_METRICS):
                found = {k: record[k] for k in VALIDATION_METRICS if k in record}
        return found

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def save(self, step: int, state: TrainState, metrics: dict | None = None) -> None:
        self._closing_on_error(self.ckpt.save, step, state, metrics)

    def finish(self, final: TrainState, save: bool) -> None:
        if save:
            self.save(int(final.step), final)
        self.ckpt.wait()
        self.ckpt.close()


class _OverfitMonitor:
    """Catastrophic-overfitting checks after each validation (``advjax.train.monitor``).

    Jacobian value: the epoch mean of the defense's per-step ``jac_norm`` metric when it reports
    one (``train_jac_norm``), else the estimate at the defense's (warmed-up) adversaries of the
    first ``validation.jac_examples`` validation images (``val_jac_norm``; at the clean images
    for a defense without an attack). The state is rebuilt from ``metrics.jsonl`` on resume.
    """

    def __init__(self, config, model, val_ds, defense, workdir: str, start: int):
        vc = config.validation
        self.detector = monitor.OverfitDetector(
            vc.get("co_drop", 0.1), vc.get("co_jac_factor", 10.0)
        )
        self.seed, self.model, self.defense = config.seed, model, defense
        self.attack = defense.attacks[0] if defense.attacks else None
        adversaries = getattr(defense, "adversaries", None) or getattr(
            getattr(defense, "defense", None), "adversaries", ()
        )
        self.target = adversaries[0].target if adversaries else "labels"
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

    def check(self, variables: Any, record: dict[str, float], step: int, log: _Log) -> dict:
        robust_accuracy = record["val_robust_accuracy"]
        out: dict[str, float] = {}
        jac = None
        if self.jac_steps:
            jac = float(jax.device_get(self.jac_sum)) / self.jac_steps
            out["train_jac_norm"] = jac
        elif self.jac_batch is not None:
            warmup = self.defense.eps_warmup_steps
            jac = monitor.jacobian_norm_at_adversary(
                self.model,
                variables,
                *self.jac_batch,
                self.attack,
                jax.random.fold_in(jax.random.key(self.seed + 2), step),
                budget_scale=float(self.defense.ramp(step - 1)) if warmup else None,
                target=self.target,
            )
            out["val_jac_norm"] = jac
        self.jac_sum, self.jac_steps = None, 0
        self.state, co_metrics = monitor.co_update(self.state, robust_accuracy, jac, self.detector)
        out.update(co_metrics)
        if self.state.flagged and jax.process_index() == 0:
            message = (
                f"catastrophic overfitting suspected at epoch {record.get('epoch')}: validation "
                f"robust accuracy {robust_accuracy:.4f} is {co_metrics['co_robust_drop']:.4f} "
                "below its best"
            )
            if "co_jac_ratio" in co_metrics:
                message += f"; Jacobian-norm estimate x{co_metrics['co_jac_ratio']:.3g} in an epoch"
            logging.warning(message)
            log.write("WARNING: " + message)
        return out
