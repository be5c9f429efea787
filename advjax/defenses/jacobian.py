"""The random-projection estimate of ``||J||_F^2``, shared by the Jacobian penalty and the
catastrophic-overfitting monitor.

Hoffman, Roberts & Yaida (2019), "Robust learning with Jacobian regularization", Sec. 2-3: with
``v`` uniform on the unit sphere of the output space (dimension ``K``),
``E_v[||v^T J||^2] = ||J||_F^2 / K``, so ``K * ||v^T J||^2`` is unbiased. ``v^T J`` for every
example at once is one vector-Jacobian product with the cotangent ``[v_1; ...; v_B]``: one backward
pass per projection, whatever ``K`` (``jax.jacrev`` would need ``K``). ATLAS's
``||J(x')||_F^approx`` (Sec. 5.1, Eq. 12) is this estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from advjax.attacks.base import per_example_keys


def projection_vectors(
    keys: jax.Array, num_classes: int, num_projections: int = 1, dtype: Any = jnp.float32
) -> jax.Array:
    """Per-example random unit vectors, uniform on the sphere ``S^{K-1}``: ``[P, B, K]``.

    ``keys`` is ``[B]`` (one key per example); each example's vectors depend on its key only.
    """

    def draw(key):
        v = jax.random.normal(key, (num_projections, num_classes))
        return v / jnp.linalg.norm(v, axis=-1, keepdims=True)

    return jax.vmap(draw, out_axes=1)(keys).astype(dtype)


def estimate_from_vjp(
    vjp_fn: Callable, num_classes: int, keys: jax.Array, num_projections: int, dtype: Any
) -> jax.Array:
    """``K * mean_p ||v_p^T J||^2`` per example, one VJP (backward pass) per projection."""
    vectors = projection_vectors(keys, num_classes, num_projections, dtype)

    def one(v):  # v: [B, K] -> [B]
        (g,) = vjp_fn(v)
        return num_classes * jnp.sum(jnp.square(g).reshape(g.shape[0], -1), axis=-1)

    if num_projections == 1:
        return one(vectors[0])
    return jnp.mean(jax.vmap(one)(vectors), axis=0)


def check_num_projections(num_projections: int) -> None:
    if int(num_projections) != num_projections or num_projections < 1:
        raise ValueError(f"num_projections must be a positive integer, got {num_projections}")


def jacobian_norm_estimate(
    logits_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    key: jax.Array,
    num_projections: int = 1,
) -> jax.Array:
    """Unbiased random-projection estimate of ``||J_i||_F^2``, ``J_i = d logits_i / d x_i``.

    Args:
      logits_fn: ``x -> logits [B, K]`` (e.g. ``lambda x: model_fn(variables, x)``), with examples
        independent of each other (otherwise the estimate includes cross-example terms).
      x: the input batch ``[B, ...]``.
      key: one PRNG key, or one key per example ``[B]`` (an example's estimate then depends on its
        own key and input only).
      num_projections: number of random vectors averaged per example (Hoffman et al. use 1).

    Returns:
      ``[B]``: the estimates. (Hoffman et al.'s reference code returns half their batch mean.)
    """
    check_num_projections(num_projections)
    logits, vjp_fn = jax.vjp(logits_fn, x)
    keys = per_example_keys(key, logits.shape[0])
    return estimate_from_vjp(vjp_fn, logits.shape[-1], keys, int(num_projections), logits.dtype)
