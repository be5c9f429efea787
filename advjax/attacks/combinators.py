"""Combinators that build stronger attacks from attacks.

* ``restarts(attack, n)``: run ``attack`` from ``n`` independent keys (vmapped) and keep, per
  example, the worst case (success first, then the higher objective).
* ``worst_case(*attacks)``: run several attacks and keep the per-example worst case.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from advjax.attacks.base import Attack, AttackResult, better, check_images, split_keys


def _select(take: jax.Array, new: AttackResult, old: AttackResult) -> AttackResult:
    def pick(a, b):
        return jnp.where(take.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, old)


def _reduce_worst(results: AttackResult) -> AttackResult:
    """Per-example worst case along the leading (restart) axis of stacked results."""

    def fold(best, new):
        return _select(better(new.success, new.loss, best.success, best.loss), new, best), None

    first = jax.tree.map(lambda a: a[0], results)
    rest = jax.tree.map(lambda a: a[1:], results)
    best, _ = jax.lax.scan(fold, first, rest)
    return best


@dataclasses.dataclass(frozen=True)
class Restarts(Attack):
    """``num_restarts`` runs of ``attack`` from independent keys; per-example worst case."""

    attack: Attack
    num_restarts: int

    def __post_init__(self):
        if int(self.num_restarts) != self.num_restarts or self.num_restarts < 1:
            raise ValueError(f"num_restarts must be a positive integer, got {self.num_restarts}")

    def scaled(self, factor: Any) -> Restarts:
        return dataclasses.replace(self, attack=self.attack.scaled(factor))

    def run(self, model_fn, variables, x, y, key) -> AttackResult:
        check_images(x)
        keys = split_keys(key, self.num_restarts)
        stacked = jax.vmap(lambda k: self.attack.run(model_fn, variables, x, y, k))(keys)
        return _reduce_worst(stacked)


def restarts(attack: Attack, num_restarts: int) -> Restarts:
    """Runs ``attack`` ``num_restarts`` times (vmapped over keys); keeps the per-example worst."""
    return Restarts(attack, num_restarts)


@dataclasses.dataclass(frozen=True)
class WorstCase(Attack):
    """Runs each attack and keeps the per-example worst case (success first, then objective)."""

    attacks: tuple[Attack, ...]

    def scaled(self, factor: Any) -> WorstCase:
        return WorstCase(tuple(a.scaled(factor) for a in self.attacks))

    def run(self, model_fn, variables, x, y: Any, key) -> AttackResult:
        check_images(x)
        keys = split_keys(key, len(self.attacks))
        pairs = zip(self.attacks, keys, strict=True)
        results = [a.run(model_fn, variables, x, y, k) for a, k in pairs]
        return _reduce_worst(jax.tree.map(lambda *a: jnp.stack(a), *results))


def worst_case(*attacks: Attack) -> WorstCase:
    """Per-example worst case over several attacks."""
    if not attacks:
        raise ValueError("worst_case needs at least one attack")
    return WorstCase(tuple(attacks))
