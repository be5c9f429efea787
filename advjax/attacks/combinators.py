"""Combinators that build stronger attacks from attacks.

* ``restarts(attack, n)``: run ``attack`` from ``n`` independent keys (vmapped) and keep, per
  example, the worst case (success first, then the higher objective).
* ``worst_case(*attacks)``: run several attacks and keep the per-example worst case.
* ``cascade(*attacks)``: run attacks in order, each on the points still robust (AutoAttack).
* ``sequence(*attacks)``: chain attacks, each starting from the previous one's output (compound
  attacks across threat models: PGD+ and GridAdv+ of the SRT document, Appendix F).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from advjax.attacks import compaction
from advjax.attacks.base import Attack, AttackResult, better, split_keys, validated
from advjax.losses import margin


def keep_better(best: AttackResult, new: AttackResult) -> AttackResult:
    """Per example, ``new`` where it is better for the attacker (success first, then a higher
    objective), else ``best``."""
    take = better(new.success, new.loss, best.success, best.loss)

    def pick(a, b):
        return jnp.where(take.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)

    return jax.tree.map(pick, new, best)


def reduce_worst(results: AttackResult) -> AttackResult:
    """Per-example worst case along the leading (restart) axis of stacked results."""

    def fold(best, new):
        return keep_better(best, new), None

    first = jax.tree.map(lambda a: a[0], results)
    rest = jax.tree.map(lambda a: a[1:], results)
    best, _ = jax.lax.scan(fold, first, rest)
    return best


@dataclasses.dataclass(frozen=True)
class Restarts(Attack):
    """``restarts`` runs of ``attack`` from independent keys; per-example worst case."""

    attack: Attack
    restarts: int

    def __post_init__(self):
        if int(self.restarts) != self.restarts or self.restarts < 1:
            raise ValueError(f"restarts must be a positive integer, got {self.restarts}")

    def scaled(self, factor: Any) -> Restarts:
        return dataclasses.replace(self, attack=self.attack.scaled(factor))

    @validated
    def run(self, model_fn, variables, x, y, key) -> AttackResult:
        keys = split_keys(key, self.restarts)
        stacked = jax.vmap(lambda k: self.attack.run(model_fn, variables, x, y, k))(keys)
        return reduce_worst(stacked)


def restarts(attack: Attack, restarts: int) -> Attack:
    """Runs ``attack`` ``restarts`` times (vmapped over keys); keeps the per-example worst.

    ``restarts=1`` returns ``attack`` itself (same key, no extra axis).
    """
    repeated = Restarts(attack, restarts)  # validates restarts
    return attack if restarts == 1 else repeated


@dataclasses.dataclass(frozen=True)
class WorstCase(Attack):
    """Runs each attack and keeps the per-example worst case (success first, then objective)."""

    attacks: tuple[Attack, ...]

    def scaled(self, factor: Any) -> WorstCase:
        return WorstCase(tuple(a.scaled(factor) for a in self.attacks))

    @validated
    def run(self, model_fn, variables, x, y: Any, key) -> AttackResult:
        keys = split_keys(key, len(self.attacks))
        pairs = zip(self.attacks, keys, strict=True)
        results = [a.run(model_fn, variables, x, y, k) for a, k in pairs]
        return reduce_worst(jax.tree.map(lambda *a: jnp.stack(a), *results))


def worst_case(*attacks: Attack) -> WorstCase:
    """Per-example worst case over several attacks."""
    if not attacks:
        raise ValueError("worst_case needs at least one attack")
    return WorstCase(tuple(attacks))


# Halving down to 1/4 of the batch (at most 2x the still-robust rows where most of the work is),
# then quartering down to 1/64: with (1, 1/2, 1/4) alone, AutoAttack on a 500-point batch with 2
# robust points left still ran APGD-T, FAB-T and Square on 125 rows (results/autoattack_speed.md).
CASCADE_BUCKETS = (1.0, 0.5, 0.25, 0.0625, 0.015625)


@dataclasses.dataclass(frozen=True)
class Cascade(Attack):
    """Runs attacks in order, each only on the points that are still robust (AutoAttack's scheme).

    Shapes stay fixed: before each attack, the points that no earlier attack broke are gathered
    into the smallest static bucket of rows that holds them (``compaction.on_active``; ``buckets``
    are fractions of the batch, or of ``pass_rows``), the attack runs on that bucket only, and its
    results are scattered back; once every point of the batch is broken the remaining attacks do
    not run. A point counts as broken when the model misclassifies the returned ``x_adv``
    (re-checked here, not taken from the attack's own report). Points the model misclassifies
    already at ``x`` count as broken from the start. ``y`` are labels (untargeted). With one key
    for the batch, an attack's random draws for a point depend on the bucket it ran in; pass
    per-example keys (``[B]``) to make every point's result independent of the others.
    ``pass_rows``: at most this many rows per attack call, each pass on the bucket
    ``compaction.pass_plan`` picks; the default, ``"auto"``, is resolved when the attack runs:
    passes of 128 rows on a CPU, one pass on an accelerator (``compaction.default_pass_rows``).
    """

    attacks: tuple[Attack, ...]
    buckets: tuple[float, ...]
    pass_rows: int | None | str

    def __post_init__(self):
        compaction.bucket_sizes(1, self.buckets)
        compaction.check_pass_rows(self.pass_rows, auto=True)

    def scaled(self, factor: Any) -> Cascade:
        return dataclasses.replace(self, attacks=tuple(a.scaled(factor) for a in self.attacks))

    @validated
    def run(self, model_fn, variables, x, y, key) -> AttackResult:
        keys = split_keys(key, len(self.attacks))
        broken = misclassified(model_fn, variables, x, y)
        x_adv = x
        rows = compaction.default_pass_rows() if self.pass_rows == "auto" else self.pass_rows
        for attack, k in zip(self.attacks, keys, strict=True):
            x_adv, broken = cascade_stage(
                attack, model_fn, variables, x, y, k, x_adv, broken, self.buckets, rows
            )
        logits = model_fn(variables, x_adv)
        return AttackResult(x_adv=x_adv, loss=margin(logits, y), success=broken)


def misclassified(model_fn, variables, x: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.argmax(model_fn(variables, x), axis=-1) != y


def cascade_stage(
    attack: Attack,
    model_fn,
    variables,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    x_adv: jax.Array,
    broken: jax.Array,
    buckets: tuple[float, ...] = (1.0,),
    pass_rows: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """One stage of ``Cascade``: ``attack`` on the points not yet ``broken`` (compacted into
    buckets, in passes of at most ``pass_rows``); returns the updated ``(x_adv, broken)``.
    ``key``: one key or per-example keys."""

    def attack_rows(x_rows, y_rows, *key_rows):
        result = attack.run(model_fn, variables, x_rows, y_rows, *(key_rows or (key,)))
        return result.x_adv, result.success & misclassified(
            model_fn, variables, result.x_adv, y_rows
        )

    rows = (x, y, key) if key.ndim > 0 else (x, y)
    found, ok = compaction.on_active(
        attack_rows, ~broken, rows, (x_adv, jnp.zeros_like(broken)), buckets, pass_rows
    )
    new = ~broken & ok
    return jnp.where(new[:, None, None, None], found, x_adv), broken | new


def cascade(
    *attacks: Attack,
    buckets: tuple[float, ...] = CASCADE_BUCKETS,
    pass_rows: int | None | str = "auto",
) -> Cascade:
    """Attacks run in order on the points still robust; per point, the first success is kept.

    ``buckets`` and ``pass_rows``: see ``Cascade``.
    """
    if not attacks:
        raise ValueError("cascade needs at least one attack")
    return Cascade(tuple(attacks), tuple(buckets), pass_rows)


@dataclasses.dataclass(frozen=True)
class Sequence(Attack):
    """Chains attacks: ``x_0 = x``, ``x_k = attack_k(x_{k-1})``; returns the last attack's result.

    Each attack's threat model is centred on its own input, so the composite perturbation lies in
    the composition of the sets (SRT document, App. F): ``sequence(pgd, grid_adv)`` is PGD+
    (``T_1(x) = A(theta) (x + r*) + B``), ``sequence(grid_adv, pgd)`` is GridAdv+
    (``T_2(x) = A* x + B* + r``). Every attack sees the true labels ``y``; the reported success and
    loss are the last attack's, measured at the returned point.
    """

    attacks: tuple[Attack, ...]

    def scaled(self, factor: Any) -> Sequence:
        return Sequence(tuple(a.scaled(factor) for a in self.attacks))

    @validated
    def run(self, model_fn, variables, x, y, key) -> AttackResult:
        keys = split_keys(key, len(self.attacks))
        result = None
        for attack, k in zip(self.attacks, keys, strict=True):
            result = attack.run(model_fn, variables, x, y, k)
            x = result.x_adv
        return result


def sequence(*attacks: Attack) -> Sequence:
    """Compound attack: each attack starts from the previous one's adversarial example."""
    if not attacks:
        raise ValueError("sequence needs at least one attack")
    return Sequence(tuple(attacks))
