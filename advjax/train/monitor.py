"""Training monitors: catastrophic overfitting (ATLAS App. E), Jacobian-norm estimates, step time.

Catastrophic overfitting (Wong et al. 2020; ATLAS Sec. 6 and App. E): with one-step adversaries
the validation robust accuracy can fall suddenly ("a sudden drop of more than 10% on validation
robust accuracy", ATLAS Sec. 6) while the Jacobian norm at the adversaries, ``||J(x')||_F``,
"increases steeply" (App. E, Fig. 11). ``co_update`` flags an evaluation where either happens.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from advjax.defenses.jacobian import jacobian_norm_estimate
from advjax.models import make_model_fn


def jacobian_norm_sq(model_fn: Any, variables: Any, x: jax.Array, key: jax.Array) -> jax.Array:
    """Per-example random-projection estimate of ``||J(x)||_F^2``, ``J = d logits / d x``.

    The estimator of the Jacobian penalty (``advjax.defenses.jacobian``; Hoffman et al. 2019,
    Sec. 3.2; ATLAS's ``||J(x')||_F^approx``, Eq. 12): one projection per example, one
    vector-Jacobian product for the batch. ``key`` is one key, or one key per example (``[B]``).
    Returns ``[B]``.
    """
    return jacobian_norm_estimate(lambda z: model_fn(variables, z), x, key)


@functools.cache
def _jac_at_adversary(model: nn.Module, attack: Any, scaled: bool, target: str):
    model_fn = make_model_fn(model)

    @jax.jit
    def run(variables, x, y, key, budget_scale):
        attack_key, proj_key = jax.random.split(key)
        if attack is None:
            x_adv = x
        else:
            adversary = attack.scaled(budget_scale) if scaled else attack
            if target != "labels":  # what the defense's adversary gets (``Adversary.target``)
                logits = jax.lax.stop_gradient(model_fn(variables, x))
                y = logits if target == "clean_logits" else jnp.argmax(logits, -1)
            x_adv = adversary(model_fn, variables, x, y, jax.random.split(attack_key, x.shape[0]))
        return jnp.mean(jacobian_norm_sq(model_fn, variables, x_adv, proj_key))

    return run


def jacobian_norm_at_adversary(
    model: nn.Module,
    variables: Any,
    x: np.ndarray,
    y: np.ndarray,
    attack: Any,
    key: jax.Array,
    budget_scale: float | None = None,
    target: str = "labels",
) -> float:
    """Mean ``||J(x')||_F^2`` estimate at ``x' = attack(x)`` (``x`` itself without an attack).

    ``budget_scale`` multiplies the attack's budget (epsilon warm-up) without recompiling;
    ``target`` is what the attack gets as ``y`` (``Adversary.target``: ``"labels"``,
    ``"clean_logits"`` for a KL attack, ``"predicted"``).
    """
    run = _jac_at_adversary(model, attack, budget_scale is not None, target)
    scale = jnp.float32(1.0 if budget_scale is None else budget_scale)
    return float(run(variables, jnp.asarray(x), jnp.asarray(y), key, scale))


@dataclasses.dataclass(frozen=True)
class OverfitDetector:
    """Flags catastrophic overfitting after a validation.

    Attributes:
      drop: flag when the validation robust accuracy is more than ``drop`` (absolute) below the
        best so far (ATLAS Sec. 6: "a sudden drop of more than 10%"; 0 disables).
      jac_factor: flag when the Jacobian-norm estimate exceeds ``jac_factor`` times its previous
        value (ATLAS App. E: "a steep increase"; 0 disables).
    """

    drop: float = 0.1
    jac_factor: float = 10.0

    def __post_init__(self):
        if not self.drop >= 0.0:
            raise ValueError(f"co_drop must be >= 0, got {self.drop}")
        if not (self.jac_factor == 0.0 or self.jac_factor > 1.0):
            raise ValueError(f"co_jac_factor must be 0 (off) or > 1, got {self.jac_factor}")


class OverfitState(NamedTuple):
    best_robust: float = -np.inf
    last_jac: float = np.nan
    flagged: bool = False


def co_update(
    state: OverfitState,
    robust_accuracy: float,
    jac_norm: float | None = None,
    detector: OverfitDetector = OverfitDetector(),
) -> tuple[OverfitState, dict[str, float]]:
    """One validation's catastrophic-overfitting check (pure).

    Returns the new state and the metrics to log: ``catastrophic_overfitting`` (1.0 or 0.0),
    ``co_robust_drop`` (best robust accuracy so far minus this one, >= 0) and, with two Jacobian
    values, ``co_jac_ratio`` (this one over the previous one).
    """
    drop = max(0.0, float(state.best_robust) - float(robust_accuracy))
    flag = bool(detector.drop) and drop > detector.drop
    metrics = {"co_robust_drop": drop if np.isfinite(drop) else 0.0}
    if jac_norm is not None and np.isfinite(state.last_jac) and state.last_jac > 0:
        ratio = float(jac_norm) / float(state.last_jac)
        metrics["co_jac_ratio"] = ratio
        flag = flag or (bool(detector.jac_factor) and ratio > detector.jac_factor)
    metrics["catastrophic_overfitting"] = float(flag)
    new = OverfitState(
        best_robust=max(float(state.best_robust), float(robust_accuracy)),
        last_jac=float(jac_norm) if jac_norm is not None else state.last_jac,
        flagged=flag,
    )
    return new, metrics


class StepTimer:
    """Wall time per train step over a logging interval, excluding everything but the steps.

    ``start(tree)`` waits for ``tree`` (e.g. the first step's output, so compilation is not
    counted) and starts the clock; ``step()`` counts a dispatched step; ``pause(tree)`` waits for
    the dispatched steps and stops the clock (before validation or checkpointing);
    ``read(tree)`` waits, returns seconds per counted step (None if none) and restarts.
    """

    def __init__(self):
        self.elapsed, self.steps, self.since = 0.0, 0, None

    def start(self, tree: Any = None) -> None:
        jax.block_until_ready(tree)
        self.since = time.perf_counter()

    def step(self) -> None:
        self.steps += 1

    def pause(self, tree: Any = None) -> None:
        if self.since is not None:
            jax.block_until_ready(tree)
            self.elapsed += time.perf_counter() - self.since
            self.since = None

    def read(self, tree: Any = None) -> float | None:
        running = self.since is not None
        self.pause(tree)
        value = self.elapsed / self.steps if self.steps else None
        self.elapsed, self.steps = 0.0, 0
        if running:
            self.start()
        return value
