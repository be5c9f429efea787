"""Decision surfaces: the decision value ``D`` on a 2-D plane through ``x`` (SRT doc, Sec. 4.6).

``D(x) = p_y(x) - max_{i != y} p_i(x)`` with ``p = softmax(f(x))``: positive iff ``x`` is
classified correctly. ``decision_surface`` evaluates it at ``x + a d1 + b d2`` on a grid of
``(a, b)``; the SRT document plots it for a standard and an SRT model (Fig. 3 on MNIST, App. H
Fig. 4 on CIFAR-10) with "two different perturbation directions" that it does not specify; by
default ``d1`` is the adversarial direction ``sign(grad_x CE)`` and ``d2`` a random direction
orthogonal to it (our choice; ``mode="random"`` takes two random ones).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from advjax.analysis.landscape import CHUNK_SIZE, centered_grid, input_directions, plane_values
from advjax.attacks.base import ModelFn


def decision_value(logits: jax.Array, y: jax.Array) -> jax.Array:
    """``D = p_y - max_{i != y} p_i`` ``[B]`` from logits ``[B, K]`` (SRT doc, Sec. 4.6)."""
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    p_y = jnp.take_along_axis(p, y[:, None], axis=-1)[:, 0]
    others = jnp.where(jax.nn.one_hot(y, p.shape[-1], dtype=bool), -jnp.inf, p)
    return p_y - jnp.max(others, axis=-1)


def decision_surface(
    model_fn: ModelFn,
    variables: Any,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array,
    *,
    radius: float,
    num_points: int = 21,
    directions: tuple[jax.Array, jax.Array] | None = None,
    mode: str = "adversarial",
    random: str = "rademacher",
    clip: bool = False,
    chunk_size: int = CHUNK_SIZE,
) -> jax.Array:
    """``D(x + a d1 + b d2)`` ``[B, n, n]`` for ``a, b in linspace(-radius, radius, n)``.

    SRT doc, Sec. 4.6 and App. H. ``directions=(d1, d2)`` (each ``[B, H, W, C]``) or, by default,
    ``advjax.analysis.landscape.input_directions(..., mode=mode, random=random)``: ``d1 =
    sign(grad_x CE)`` (unit Linf norm, so ``a`` is the Linf size of the step) and ``d2`` random,
    orthogonal to ``d1`` and of the same L2 norm. ``num_points`` is odd, so the centre
    ``[n // 2, n // 2]`` equals ``D(x)``. The plane leaves the [0, 1] box unless ``clip=True``
    (default off and ``num_points = 21``: our choices). Pure; jittable with ``model_fn`` static.
    """
    x = jax.lax.stop_gradient(jnp.asarray(x, jnp.float32))
    y = jnp.asarray(y)
    if directions is None:
        directions = input_directions(model_fn, variables, x, y, key, mode=mode, random=random)
    d1, d2 = directions

    def value(point: jax.Array) -> jax.Array:
        if clip:
            point = jnp.clip(point, 0.0, 1.0)
        return decision_value(model_fn(variables, point), y)

    return plane_values(value, x, d1, d2, centered_grid(radius, num_points), chunk_size=chunk_size)
