"""The train state: one pytree holding everything a step reads and writes."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Parameters, BatchNorm statistics, optimiser state, step, RNG and the states of the
    defense and the learning-rate schedule.

    ``rng`` holds raw key data (``jax.random.key_data``) so that the state checkpoints as plain
    arrays; ``defense_state`` holds state that defenses carry across steps (empty for most);
    ``schedule_state`` the validation-guided schedule's ``PlateauState`` (empty without one),
    whose ``lr_scale`` multiplies every update.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    defense_state: Any = flax.struct.field(default_factory=dict)
    schedule_state: Any = flax.struct.field(default_factory=dict)

    @property
    def key(self) -> jax.Array:
        return jax.random.wrap_key_data(self.rng)

    @property
    def variables(self) -> dict[str, Any]:
        variables = {"params": self.params}
        if self.batch_stats:
            variables["batch_stats"] = self.batch_stats
        return variables


def create_train_state(
    variables: dict[str, Any],
    tx: optax.GradientTransformation,
    key: jax.Array,
    defense_state: Any = None,
    schedule_state: Any = None,
) -> TrainState:
    """The state at step 0; ``defense_state`` is the defense's ``init_state()`` and
    ``schedule_state`` a ``PlateauState`` (default: none)."""
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=jax.random.key_data(key),
        defense_state={} if defense_state is None else defense_state,
        schedule_state={} if schedule_state is None else schedule_state,
    )
