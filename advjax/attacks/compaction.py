"""Run batched work only on the rows that still need it, with static shapes.

Evaluation attacks spend most of their time on points that are already decided: AutoAttack runs
each component only on the points still robust, and GridAdv can stop trying transforms on a point
once one of them misclassifies it. Eager libraries shrink the batch; under ``jit`` shapes are
static, so ``on_active`` moves the active rows to the front (a stable sort of the mask), runs the
work on the smallest static *bucket* of rows that holds them all (``lax.switch`` over one branch
per bucket size, each compiled once), and scatters the results back. Rows that are not active keep
their ``fallback`` values. With no active row nothing runs.

With ``pass_rows`` the active rows are worked through in passes of at most that many rows (a
``fori_loop`` with a static trip count; passes with nothing left to do take the empty branch). The
bucket fractions are then fractions of ``pass_rows``, and ``pass_plan`` chooses each pass's bucket
so that the rows run, plus ``PASS_OVERHEAD_ROWS`` for each pass, are fewest: 232 active rows with
sizes (2, 8, 32, 64, 128) run as 128 + 64 + 32 + 8, where "one full pass, then the smallest bucket
that holds the rest" ran 128 + 125 rows of a 500-point batch, 8% of them padding (APGD-T in
AutoAttack: results/autoattack_speed.md). On a CPU a pass costs about its rows, so passes are
cheap there; on an accelerator large batches are cheaper per row, so ``default_pass_rows`` leaves
passes off.

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
import numpy as np

# Bucket sizes as fractions of the batch, quartering down to 1/64: few branches to compile, and at
# most 4x the rows that are still active.
DEFAULT_BUCKETS = (1.0, 0.25, 0.0625, 0.015625)
# Rows per pass on a CPU (``default_pass_rows``).
CPU_PASS_ROWS = 128
# What one more pass costs, in rows (``pass_plan``). Input gradient of the 4-conv MNIST CNN on 2 CPU
# cores: 3.0, 10.2, 19.6, 28.0, 37.2 ms for 8, 32, 64, 96, 128 rows, i.e. 0.28 ms a row + 1.1 ms.
PASS_OVERHEAD_ROWS = 4


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


def pass_plan(
    batch: int, sizes: Sequence[int], overhead: int = PASS_OVERHEAD_ROWS
) -> tuple[np.ndarray, int]:
    """The bucket of the next pass for every number of rows left, and the most passes needed.

    Dynamic programming over ``left = 0 .. batch``: ``cost(left) = min_s (s + overhead) +
    cost(max(left - s, 0))`` over the static ``sizes``; ties go to the larger bucket (fewer
    passes). Returns ``choice`` (``[batch + 1]`` indices into ``sizes``; ``choice[0]`` is unused)
    and the largest number of passes any ``left`` takes.
    """
    sizes = sorted(sizes)
    cost = np.zeros(batch + 1, np.int64)
    passes = np.zeros(batch + 1, np.int64)
    choice = np.zeros(batch + 1, np.int32)
    for left in range(1, batch + 1):
        options = [(s + overhead + cost[max(left - s, 0)], -s, i) for i, s in enumerate(sizes)]
        best, _, index = min(options)
        cost[left], choice[left] = best, index
        passes[left] = 1 + passes[max(left - sizes[index], 0)]
    return choice, int(passes.max())


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
      buckets: static sizes to choose from (``bucket_sizes``): fractions of the batch, or of
        ``pass_rows`` when that is smaller.
      pass_rows: at most this many rows per call of ``fn`` (None: all active rows in one call),
        each pass on the bucket ``pass_plan`` chooses.

    Returns the pytree shaped like ``fallback``. Inactive rows that fill up a bucket are computed
    but discarded.
    """
    batch = active.shape[0]
    check_pass_rows(pass_rows)
    cap = batch if pass_rows is None else min(batch, pass_rows)
    sizes = bucket_sizes(cap, buckets)
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
    if cap == batch:  # one pass, on the smallest bucket that holds every active row
        branch = jnp.where(count <= 0, 0, 1 + jnp.searchsorted(jnp.asarray(sizes), count))
        return jax.lax.switch(branch, branches, (0, inputs, fallback))

    choice, passes = pass_plan(batch, sizes)
    choice, size_of = jnp.asarray(choice), jnp.asarray(sizes)

    def one_pass(_, carry):
        start, out = carry
        left = jnp.maximum(count - start, 0)
        index = choice[left]
        branch = jnp.where(left == 0, 0, 1 + index)
        out = jax.lax.switch(branch, branches, (start, inputs, out))
        return start + jnp.where(left == 0, 0, size_of[index]), out

    return jax.lax.fori_loop(0, passes, one_pass, (jnp.zeros((), count.dtype), fallback))[1]
