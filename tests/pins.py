"""Builds one variant's train step from its config (the pinned-loss test's only tie to the API)."""

from __future__ import annotations

from advjax import defenses
from advjax.experiment import build_model, initial_state
from advjax.train.step import sharded_train_step


def build_step(config, mesh, steps_per_epoch: int):
    """(initial host state, jitted sharded train step) of ``config`` on 28x28x1 images."""
    model = build_model(config)
    defense = defenses.build(config.defense, steps_per_epoch)
    state, tx, schedule = initial_state(
        config, model, (28, 28, 1), steps_per_epoch, defense.init_state()
    )
    step_fn = sharded_train_step(model, defense, tx, schedule, mesh)
    return state, step_fn
