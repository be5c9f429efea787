"""Optimisers and learning-rate schedules (optax), built from a config."""

from __future__ import annotations

import jax
import optax

from advjax.train.schedules import Plateau

SCHEDULES = ("constant", "piecewise", "cosine", "cyclic")
OPTIMIZERS = ("sgd", "adam")


def make_schedule(cfg, steps_per_epoch: int) -> optax.Schedule:
    """Learning-rate schedule in steps.

    * ``constant``: ``learning_rate``.
    * ``piecewise``: multiply by ``decay_factor`` at each epoch in ``decay_epochs`` (Madry et al.).
    * ``cosine``: linear warm-up over ``warmup_epochs``, then cosine decay to 0.
    * ``cyclic``: one cycle, linear 0 -> ``learning_rate`` over the first ``peak_fraction`` of
      training and back to 0 (Wong et al. 2020, fast AT).
    """
    name, lr = cfg.schedule, cfg.learning_rate
    total = max(1, int(cfg.epochs * steps_per_epoch))
    if name == "constant":
        return optax.constant_schedule(lr)
    if name == "piecewise":
        boundaries = {
            int(e * steps_per_epoch): cfg.get("decay_factor", 0.1)
            for e in cfg.get("decay_epochs", ())
        }
        return optax.piecewise_constant_schedule(lr, boundaries)
    if name == "cosine":
        warmup = int(cfg.get("warmup_epochs", 0) * steps_per_epoch)
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, total)
    if name == "cyclic":
        peak = max(1, int(cfg.get("peak_fraction", 0.4) * total))
        return optax.join_schedules(
            [optax.linear_schedule(0.0, lr, peak), optax.linear_schedule(lr, 0.0, total - peak)],
            [peak],
        )
    raise ValueError(f"unknown schedule {name!r}; valid schedules: {', '.join(SCHEDULES)}")


def _decay_mask(params):
    """Weight decay on kernels only, not on biases or BatchNorm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def plateau_rule(cfg) -> Plateau | None:
    """The ``plateau`` rule of a train config; None when absent, empty or ``enabled=False``."""
    settings = cfg.get("plateau", None)
    if not settings or not settings.get("enabled", True):
        return None
    return Plateau.from_config(settings)


def make_optimizer(
    cfg, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``optax.chain(add_decayed_weights, sgd|adam)`` with the configured schedule.

    With ``cfg.plateau`` (ATLAS App. B, see ``advjax.train.schedules``) the train step multiplies
    the updates by ``TrainState.schedule_state.lr_scale``: the effective learning rate is
    ``schedule(step) * lr_scale`` for SGD (with momentum, weight decay) and Adam alike, since both
    end with ``-learning_rate * direction``.
    """
    schedule = make_schedule(cfg, steps_per_epoch)
    if cfg.optimizer == "sgd":
        base = optax.sgd(
            schedule, momentum=cfg.get("momentum", 0.9) or None, nesterov=cfg.get("nesterov", False)
        )
    elif cfg.optimizer == "adam":
        base = optax.adam(schedule)
    else:
        raise ValueError(
            f"unknown optimizer {cfg.optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}"
        )
    wd = cfg.get("weight_decay", 0.0)
    tx = optax.chain(optax.add_decayed_weights(wd, mask=_decay_mask), base) if wd else base
    return tx, schedule
