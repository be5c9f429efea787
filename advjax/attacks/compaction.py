"""Run batched work only on the rows that still need it, with static shapes.

Evaluation attacks spend most of their time on points that are already decided: AutoAttack runs
each component only on the points still robust, and GridAdv can stop trying transforms on a point
once one of them misclassifies it. Eager libraries shrink the batch; under ``jit`` shapes are
static, so ``on_active`` moves the active rows to the front (a stable sort of the mask), runs the
work on the smallest static *bucket* of rows that holds them all (``lax.switch`` over one branch
per bucket size, each compiled once), and scatters the results back. Rows that are not active keep
their ``fallback`` values. With no active row nothing runs.

The result does not depend on the bucket for any function whose rows are computed independently
(a model in inference mode, an attack with per-example keys). Under ``vmap`` with a batched mask,
``lax.switch`` becomes a select and every branch runs, so compaction then only costs time: vmap
outside the attack, or pass ``buckets=(1.0,)`` to switch it off.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

# Bucket sizes as fractions of the batch, quartering down to 1/64: few branches to compile, and at
# most 4x the rows that are still active.
DEFAULT_BUCKETS = (1.0, 0.25, 0.0625, 0.015625)


def bucket_sizes(batch: int, buckets: Sequence[float]) -> tuple[int, ...]:
    """Sorted distinct static row counts ``ceil(fraction * batch)``; always includes ``batch``.

    Fractions must lie in ``(0, 1]``; an integer above 1 is a row count (capped at ``batch``).
    """
    sizes = {batch}
    for b in buckets:
        if not b > 0:
            raise ValueError(f"bucket sizes must be positive fractions or counts, got {b}")
        sizes.add(min(batch, math.ceil(b * batch) if b <= 1 else int(b)))
    return tuple(sorted(sizes))


def _where_rows(mask: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.where(mask.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


def on_active(
    fn: Callable[..., Any],
    active: jax.Array,
    inputs: tuple[Any, ...],
    fallback: Any,
    buckets: Sequence[float] = DEFAULT_BUCKETS,
) -> Any:
    """``fn(*inputs)`` on the rows where ``active`` is set; ``fallback`` on the others.

    Args:
      fn: maps pytrees whose leaves have a leading row axis of size ``n`` to a pytree shaped like
        ``fallback`` with leading axis ``n``, row by row.
      active: bool ``[B]``.
      inputs: pytrees with leading axis ``B`` (leaves without one, e.g. a batch key, go through
        unchanged when wrapped in ``fn``'s closure instead).
      fallback: pytree with leading axis ``B``; the output for inactive rows.
      buckets: static sizes to choose from (``bucket_sizes``).

    Returns the pytree shaped like ``fallback``. Inactive rows that fill up a bucket are computed
    but discarded.
    """
    batch = active.shape[0]
    sizes = bucket_sizes(batch, buckets)
    order = jnp.argsort(~active, stable=True)  # active rows first, in their original order
    count = jnp.sum(active)

    def skip(operands):
        return operands[1]

    def run_on(size: int):
        def run(operands):
            inputs, fallback = operands
            rows = order[:size]
            outputs = fn(*jax.tree.map(lambda a: a[rows], inputs))
            keep = active[rows]
            return jax.tree.map(
                lambda f, o: f.at[rows].set(_where_rows(keep, o, f[rows])), fallback, outputs
            )

        return run

    index = jnp.where(count == 0, 0, 1 + jnp.searchsorted(jnp.asarray(sizes), count))
    branches = [skip] + [run_on(s) for s in sizes]
    return jax.lax.switch(index, branches, (inputs, fallback))
