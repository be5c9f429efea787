"""Run batched work only on the rows that still need it, with static shapes.

Evaluation attacks spend most of their time on points that are already decided: AutoAttack runs
each component only on the points still robust, and GridAdv can stop trying transforms on a point
once one of them misclassifies it. Eager libraries shrink the batch; under ``jit`` shapes are
static, so ``on_active`` moves the active rows to the front (a stable sort of the mask), runs the
work on the smallest static *bucket* of rows that holds them all (``lax.switch`` over one branch
per bucket size, each compiled once), and scatters the results back. Rows that are not active keep
their ``fallback`` values. With no active row nothing runs.

With ``pass_rows`` the active rows are worked through in passes of at most that many rows (a
``fori_loop`` with a static trip count; passes with nothing left to do take the empty branch), each
pass on the smallest bucket that holds its rows. The work done beyond the active rows is then at
most one partly filled bucket, where a single pass over fraction-of-the-batch buckets can carry
up to twice the active rows (107 active rows of 200 run on 200), at the cost of one more compiled
size. On a CPU, APGD-T on ~240 active rows took the same time in passes of 128 or 64 rows as in
one pass, so passes cost nothing there; on an accelerator large batches are cheaper per row, so
``default_pass_rows`` leaves passes off.

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
# Rows per pass on a CPU (``default_pass_rows``).
CPU_PASS_ROWS = 128


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


def check_pass_rows(pass_rows: Any, auto: bool = False) -> None:
    """``pass_rows`` must be None (one pass), a positive integer, or, with ``auto``, ``"auto"``."""
    positive_int = isinstance(pass_rows, int) and not isinstance(pass_rows, bool) and pass_rows >= 1
    if not (positive_int or pass_rows is None or (auto and pass_rows == "auto")):
        valid = "'auto', None or a positive integer" if auto else "None or a positive integer"
        raise ValueError(f"pass_rows must be {valid}, got {pass_rows!r}")


def default_pass_rows() -> int | None:
    """Rows per pass for evaluation attacks: 128 on a CPU, None (one pass) on an accelerator."""
    return CPU_PASS_ROWS if jax.default_backend() == "cpu" else None


def on_active(
    fn: Callable[..., Any],
    active: jax.Array,
    inputs: tuple[Any, ...],
    fallback: Any,
    buckets: Sequence[float] = DEFAULT_BUCKETS,
    pass_rows: int | None = None,
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
      pass_rows: at most this many rows per call of ``fn`` (None: all active rows in one call);
        bucket sizes above it are replaced by it.

    Returns the pytree shaped like ``fallback``. Inactive rows that fill up a bucket are computed
    but discarded.
    """
    batch = active.shape[0]
    check_pass_rows(pass_rows)
    cap = batch if pass_rows is None else min(batch, pass_rows)
    sizes = tuple(sorted({min(s, cap) for s in bucket_sizes(batch, buckets)} | {cap}))
    passes = -(-batch // cap)
    order = jnp.argsort(~active, stable=True)  # active rows first, in their original order
    # Padding with an out-of-range row: gathers clip it, scatters drop it.
    order = jnp.concatenate([order, jnp.full((cap,), batch, order.dtype)])
    count = jnp.sum(active)

    def skip(operands):
        return operands[2]

    def run_on(size: int):
        def run(operands):
            start, inputs, out = operands
            rows = jax.lax.dynamic_slice(order, (start,), (size,))
            keep = start + jnp.arange(size) < count  # the active rows of this pass
            taken = jax.tree.map(lambda a: jnp.take(a, rows, axis=0, mode="clip"), inputs)
            outputs = fn(*taken)
            target = jnp.where(keep, rows, batch)
            return jax.tree.map(lambda f, o: f.at[target].set(o, mode="drop"), out, outputs)

        return run

    branches = [skip] + [run_on(s) for s in sizes]

    def one_pass(index, out):
        start = index * cap
        left = jnp.minimum(count - start, cap)
        branch = jnp.where(left <= 0, 0, 1 + jnp.searchsorted(jnp.asarray(sizes), left))
        return jax.lax.switch(branch, branches, (start, inputs, out))

    if passes == 1:
        return one_pass(0, fallback)
    return jax.lax.fori_loop(0, passes, one_pass, fallback)
