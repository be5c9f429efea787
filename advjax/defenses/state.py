"""State rules: what a defense carries across steps (``advjax.defenses.core.StateRule``).

A rule has ``init() -> state``, ``statistics(views, values) -> stats`` (per-device batch means,
computed inside the loss function; ``values`` are the unweighted term values by name) and
``update(state, stats) -> state``, called by the train step after averaging ``stats`` over every
device and host. The state lives in ``TrainState.defense_state``: checkpointed with the rest and
restored exactly on resume.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class MovingAverage:
    """Exponential moving averages of term values: ``m_t = decay m_{t-1} + (1 - decay) L_t``,
    with ``m_0 = initial``; state ``{term name: m}`` (read it in a weight with ``FromState``)."""

    terms: tuple[str, ...]
    decay: float = 0.9
    initial: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {self.decay}")

    def init(self) -> dict[str, jax.Array]:
        return {name: jnp.asarray(self.initial, jnp.float32) for name in self.terms}

    def statistics(self, views: Any, values: dict[str, jax.Array]) -> dict[str, jax.Array]:
        del views
        missing = [name for name in self.terms if name not in values]
        if missing:
            raise ValueError(f"MovingAverage of unknown terms {missing}; terms: {sorted(values)}")
        return {name: values[name] for name in self.terms}

    def update(self, state: dict[str, jax.Array], statistics: dict[str, jax.Array]):
        return {
            name: self.decay * state[name] + (1.0 - self.decay) * statistics[name]
            for name in self.terms
        }
