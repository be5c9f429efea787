"""Optimisers and learning-rate schedules (optax), built from a config."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from advjax.train.schedules import Plateau, PlateauState, initial_plateau_state

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


def scale_by_plateau() -> optax.GradientTransformation:
    """Multiplies the updates by ``lr_scale`` of its state, a :class:`PlateauState`.

    Last in the chain, this scales the learning rate of SGD (with momentum, weight decay) and Adam
    alike: both end with ``-learning_rate * direction``. The training loop rewrites the state after
    each validation (``set_plateau_state``); the update itself leaves it unchanged.
    """

    def init(params):
        del params
        return PlateauState(*(jnp.asarray(v) for v in initial_plateau_state()))

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u: u * state.lr_scale.astype(u.dtype), updates), state

    return optax.GradientTransformation(init, update)


def plateau_rule(cfg) -> Plateau | None:
    """The ``plateau`` rule of a train config; None when absent, empty or ``enabled=False``."""
    settings = cfg.get("plateau", None)
    if not settings or not settings.get("enabled", True):
        return None
    return Plateau.from_config(settings)


def get_plateau_state(opt_state: Any) -> PlateauState | None:
    """The plateau state inside an optimiser state built with a ``plateau`` rule, else None."""
    if isinstance(opt_state, tuple) and opt_state and isinstance(opt_state[-1], PlateauState):
        return opt_state[-1]
    return None


def set_plateau_state(opt_state: Any, plateau: PlateauState) -> Any:
    """``opt_state`` with its plateau state replaced by ``plateau`` (leaves of the same dtypes and
    shapes, on the host or placed like the rest of the state: the caller's choice)."""
    if get_plateau_state(opt_state) is None:
        raise ValueError("this optimiser state has no plateau state (no train.plateau config)")
    return (*opt_state[:-1], PlateauState(*plateau))


def make_optimizer(
    cfg, steps_per_epoch: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``optax.chain(add_decayed_weights, sgd|adam)`` with the configured schedule.

    With ``cfg.plateau`` (ATLAS App. B, see ``advjax.train.schedules``), ``scale_by_plateau`` is
    chained last: the effective learning rate is ``schedule(step) * lr_scale``.
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
    if plateau_rule(cfg) is not None:
        tx = optax.chain(tx, scale_by_plateau())
    return tx, schedule
