"""Projections onto Lp balls ∩ box: membership, idempotence, exactness (variational inequality)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from advjax.threats import LpBall, lp_norm

SHAPE = (3, 4, 4, 1)
points = hnp.arrays(np.float32, SHAPE, elements=st.floats(0, 1, width=32))
offsets = hnp.arrays(np.float32, SHAPE, elements=st.floats(-3, 3, width=32))


@functools.cache
def _jitted(norm: str, eps: float):
    """(project, init, contains) of ``LpBall(norm, eps)``, jitted once per ball (eager op-by-op
    dispatch made the property tests the slowest of this file)."""
    ball = LpBall(norm, eps)
    return jax.jit(ball.project), jax.jit(ball.init), jax.jit(ball.contains)


norms_and_eps = st.sampled_from(
    [("linf", 0.1), ("linf", 0.5), ("l2", 0.3), ("l2", 2.0), ("l1", 0.5), ("l1", 4.0)]
)


@settings(max_examples=60, deadline=None)
@given(points, offsets, norms_and_eps, st.integers(0, 2**31 - 1))
def test_projection_is_exact_and_idempotent(x, offset, norm_eps, seed):
    project, init, contains = _jitted(*norm_eps)
    v = jnp.asarray(x + offset)
    p = project(v, x)
    assert bool(jnp.all(contains(p, x)))
    np.testing.assert_allclose(project(p, x), p, atol=2e-6)
    # Exactness: <v - p, z - p> <= 0 for every feasible z (variational inequality).
    for i in range(4):
        key = jax.random.fold_in(jax.random.key(seed), i)
        z = init(key, jnp.asarray(x))
        inner = jnp.sum(((v - p) * (z - p)).reshape(SHAPE[0], -1), axis=1)
        scale = 1.0 + jnp.sum(jnp.abs(v - p).reshape(SHAPE[0], -1), axis=1)
        assert bool(jnp.all(inner <= 1e-4 * scale)), (norm_eps, inner)


@settings(max_examples=30, deadline=None)
@given(points, norms_and_eps, st.integers(0, 2**31 - 1))
def test_random_init_is_feasible(x, norm_eps, seed):
    ball = LpBall(*norm_eps)
    z = ball.init(jax.random.key(seed), jnp.asarray(x))
    assert bool(jnp.all(ball.contains(z, x)))


def test_init_with_per_example_keys_is_batch_independent():
    x = jax.random.uniform(jax.random.key(0), (4, 5, 5, 1))
    keys = jax.random.split(jax.random.key(1), 4)
    ball = LpBall("l2", 0.5)
    whole = ball.init(keys, x)
    halves = jnp.concatenate([ball.init(keys[:2], x[:2]), ball.init(keys[2:], x[2:])])
    np.testing.assert_array_equal(whole, halves)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_direction_has_unit_norm_and_ascends(norm):
    g = jax.random.normal(jax.random.key(0), (2, 6, 6, 1))
    x = jnp.full(g.shape, 0.5)
    d = LpBall(norm, 1.0).direction(g, x)
    np.testing.assert_allclose(lp_norm(d, norm), 1.0, rtol=1e-5)
    assert bool(jnp.all(jnp.sum((d * g).reshape(2, -1), axis=1) > 0))


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="eps must be >= 0"):
        LpBall("linf", -0.1)
    with pytest.raises(ValueError, match="valid norms: linf, l2, l1"):
        LpBall("l3", 0.1)
