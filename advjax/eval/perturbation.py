"""Perturbation statistics of adversarial examples (spec ``thesis_ch5_6.md`` Table 5).

For ``delta = x_adv - x`` with ``d`` pixels per example:

* ``l1``: the per-pixel mean ``|delta|`` (``||delta||_1 / d``, averaged over examples; Table 5's
  "L_1" column, the released code's ``mynorm(order=1)``),
* ``linf``: the mean over examples of the per-example ``||delta||_inf``,
* ``p_0.9eps``, ``p_eps``, ``p_1.1eps``: the fractions of all pixels with ``|delta| <= r eps``
  for ``r = 0.9, 1, 1.1`` (a hard Linf ball gives ``p_eps = 1``; UDR's soft ball leaves some
  pixels beyond ``eps``).

A pixel counts as within ``r eps`` up to ``atol`` (``ATOL``): float32 ``x + eps - x`` may differ
from ``eps`` by rounding. Three forms, all with fixed shapes:

* ``per_example_statistics(x_adv, x, eps)``: the five values per example ``[B]`` (what the
  evaluation suite stores, per point, so that resumed runs keep them);
* ``perturbation_statistics(x_adv, x, eps, mask)``: the five averages over the unmasked rows;
* the streaming form, batch by batch: ``acc = init_accumulator()``,
  ``acc = accumulate(acc, x_adv, x, eps, mask)``, ``finalize(acc)`` (a pytree of sums, usable
  inside ``jit``); ``summarize(per_example, mask)`` averages stored per-example values.
Every example has the same ``d``, so the mean of per-example fractions is the fraction over all
pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Slack of "|delta| <= r eps": float32 rounding of x +- eps in [0, 1] is below 1e-7.
ATOL = 1e-6
RATIOS = (("p_0.9eps", 0.9), ("p_eps", 1.0), ("p_1.1eps", 1.1))
KEYS = ("l1", "linf", *(name for name, _ in RATIOS))
COUNT = "examples"


def per_example_statistics(
    x_adv: jax.Array, x: jax.Array, eps: Any, atol: float = ATOL
) -> dict[str, jax.Array]:
    """The statistics of each example ``[B]`` (``KEYS``): mean and max ``|delta|`` and the
    fractions of its pixels with ``|delta| <= r eps``."""
    a = jnp.abs(x_adv.astype(jnp.float32) - x.astype(jnp.float32)).reshape(x.shape[0], -1)
    out = {"l1": jnp.mean(a, axis=1), "linf": jnp.max(a, axis=1)}
    for name, ratio in RATIOS:
        out[name] = jnp.mean((a <= ratio * eps + atol).astype(jnp.float32), axis=1)
    return out


def _weights(mask: Any, batch: int) -> jax.Array:
    if mask is None:
        return jnp.ones((batch,), jnp.float32)
    return jnp.asarray(mask).reshape(batch).astype(jnp.float32)


def init_accumulator() -> dict[str, jax.Array]:
    """Zero sums: ``KEYS`` and the number of examples ``COUNT`` (a pytree of scalars)."""
    return {k: jnp.zeros((), jnp.float32) for k in (*KEYS, COUNT)}


def accumulate(
    acc: Mapping[str, jax.Array],
    x_adv: jax.Array,
    x: jax.Array,
    eps: Any,
    mask: Any = None,
    atol: float = ATOL,
) -> dict[str, jax.Array]:
    """``acc`` plus this batch's sums over its unmasked rows (``mask``: ``[B]``, 1 = counted)."""
    stats = per_example_statistics(x_adv, x, eps, atol)
    w = _weights(mask, x.shape[0])
    out = {k: acc[k] + jnp.sum(jnp.where(w > 0, stats[k], 0.0) * w) for k in KEYS}
    out[COUNT] = acc[COUNT] + jnp.sum(w)
    return out


def finalize(acc: Mapping[str, Any]) -> dict[str, Any]:
    """The averages of accumulated sums (0 with no examples) and the example count."""
    n = acc[COUNT]
    out = {k: acc[k] / jnp.maximum(n, 1.0) for k in KEYS}
    out[COUNT] = n
    return out


def perturbation_statistics(
    x_adv: jax.Array, x: jax.Array, eps: Any, mask: Any = None, atol: float = ATOL
) -> dict[str, jax.Array]:
    """Table 5's statistics of one batch over its unmasked rows (see the module docstring):
    ``l1``, ``linf``, ``p_0.9eps``, ``p_eps``, ``p_1.1eps`` and the count ``examples``."""
    return finalize(accumulate(init_accumulator(), x_adv, x, eps, mask, atol))


def summarize(
    per_example: Mapping[str, np.ndarray], mask: np.ndarray | None = None
) -> dict[str, float]:
    """Averages (float64, on the host) of stored per-example statistics over the rows of
    ``mask`` whose values are known (``NaN`` marks unknown rows, e.g. from an older state
    file); ``examples`` is the number of rows averaged."""
    known = np.isfinite(np.asarray(per_example["l1"], np.float64))
    if mask is not None:
        known &= np.asarray(mask, bool)
    n = int(known.sum())
    out: dict[str, float] = {
        k: float(np.asarray(per_example[k], np.float64)[known].sum() / max(n, 1)) for k in KEYS
    }
    out[COUNT] = n
    return out
