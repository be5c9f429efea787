"""SPSA (gradient-free Linf): the estimator against the true gradient, and the attack against the
closed-form Linf optimum of a linear model.

The model is linear with three classes, ``z = W^T vec(x) + b``, ``w_0 = 0``, ``w_1 = u``,
``w_2 = -u`` with ``|u_i| in [0.5, 1.5]``: the margin ``max_{k != y} z_k - z_y`` is convex, so
its maximum over the ball ∩ box is a vertex ``clip(x + eps sign(w_k - w_y), 0, 1)`` of some
class ``k``; for ``y = 1, 2`` both other classes point the same way (one vertex: the global
optimum); for ``y = 0`` the two vertices are opposite local optima.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks
from advjax.attacks.spsa import spsa, spsa_gradient

D = 64


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    u = rng.choice([-1.0, 1.0], D) * rng.uniform(0.5, 1.5, D)
    w = np.stack([np.zeros(D), u, -u], axis=1).astype(np.float32)
    b = np.array([0.0, -0.5, 0.5], np.float32)
    # 12 images, some pixels at the box's edges (where the vertex is clipped).
    x = rng.uniform(0.0, 1.0, (12, 8, 8, 1)).astype(np.float32)
    x[:, :2] = rng.choice([0.0, 1.0], (12, 2, 8, 1))
    y = np.arange(12, dtype=np.int32) % 3
    return {"w": jnp.asarray(w), "b": jnp.asarray(b)}, jnp.asarray(x), jnp.asarray(y)


def model_fn(variables, x):
    return x.reshape(x.shape[0], -1) @ variables["w"] + variables["b"]


def _vertex_margins(variables, x, y, eps):
    """Per example and class k != y: the vertex for k and the margin there (NumPy, float64)."""
    w, b = np.asarray(variables["w"], np.float64), np.asarray(variables["b"], np.float64)
    flat = np.asarray(x, np.float64).reshape(len(y), -1)
    vertices, margins = np.zeros((len(y), 3, D)), np.full((len(y), 3), -np.inf)
    for i, label in enumerate(np.asarray(y)):
        for k in range(3):
            if k != label:
                vertices[i, k] = np.clip(flat[i] + eps * np.sign(w[:, k] - w[:, label]), 0, 1)
                z = vertices[i, k] @ w + b
                margins[i, k] = np.delete(z, label).max() - z[label]
    return vertices, margins


_ATTACK = spsa(1.0, step_size=0.2, steps=50, num_samples=64)  # scaled: Adam step 0.2 eps


@jax.jit
@chex.assert_max_traces(n=1)
def _run(variables, x, y, key, eps):
    return _ATTACK.scaled(eps).run_with_queries(model_fn, variables, x, y, key)


_G = np.random.default_rng(3).normal(size=(4, 8, 8, 1)).astype(np.float32)  # the gradient


def _linear_loss(points):  # L(x) = g . x per example: [S, B, ...] -> [S, B]
    return jnp.sum(points * _G[: points.shape[1]], axis=(2, 3, 4))


@functools.partial(jax.jit, static_argnums=2)
def _estimate(x, seeds, num_samples):
    return spsa_gradient(_linear_loss, x, seeds, delta=0.01, num_samples=num_samples)


def test_gradient_estimate_converges_to_the_true_gradient():
    # For a linear loss the estimate is 1/n sum_i (v_i . g) v_i, whose cosine with g is about
    # 1 / sqrt(1 + (D - 1) / n): 0.45 for n = 16, 0.985 for n = 2048.
    x = jnp.asarray(np.random.default_rng(4).uniform(size=(4, 8, 8, 1)), jnp.float32)
    seeds = jax.random.bits(jax.random.key(2), (4, 2))
    ref = np.asarray(_G).reshape(4, -1)

    def cosine(n):
        est = np.asarray(_estimate(x, seeds, n)).reshape(4, -1)
        return np.sum(est * ref, 1) / np.linalg.norm(est, axis=1) / np.linalg.norm(ref, axis=1)

    few, many = cosine(16), cosine(2048)
    assert (many > 0.95).all(), many
    assert (few < 0.8).all() and (few > 0.0).all(), few
    # Per-example streams: example 0's estimate depends on its seeds only, not on the batch.
    np.testing.assert_allclose(
        _estimate(x[:1], seeds[:1], 2048), _estimate(x, seeds, 2048)[:1], rtol=1e-5, atol=1e-6
    )


def test_reaches_the_closed_form_vertex_stays_in_the_ball_and_stops_once_broken(problem):
    variables, x, y = problem
    eps = 0.05
    vertices, margins = _vertex_margins(variables, x, y, eps)
    keys = jax.random.split(jax.random.key(0), len(y))
    result, queries = jax.tree.map(np.asarray, _run(variables, x, y, keys, eps))
    flat = result.x_adv.reshape(len(y), -1)
    assert (np.abs(flat - np.asarray(x).reshape(len(y), -1)) <= eps + 1e-6).all()
    assert ((flat >= 0) & (flat <= 1)).all()
    # Never better than the global optimum; broken exactly where the closed form allows it.
    best = margins.max(1)
    assert (result.loss <= best + 1e-4).all()
    np.testing.assert_array_equal(result.success, best > 0)
    logits = np.asarray(model_fn(variables, jnp.asarray(result.x_adv)))
    np.testing.assert_array_equal(result.success, logits.argmax(1) != np.asarray(y))
    # Broken points stopped early; the others ran all 50 steps (2 x 64 + 1 queries each, plus
    # the clean point and the start) and sit exactly on the vertex of the class they push to.
    per_step = 2 * 64 + 1
    assert (queries[~result.success] == 2 + 50 * per_step).all()
    assert (queries[result.success] < 2 + 50 * per_step).all()
    robust = ~result.success
    assert robust.sum() >= 3, result.success
    others = np.where(np.eye(3, dtype=bool)[np.asarray(y)], -np.inf, logits)
    k_end = others.argmax(1)
    rows = np.nonzero(robust)[0]
    np.testing.assert_allclose(flat[rows], vertices[rows, k_end[rows]], atol=1e-6)
    np.testing.assert_allclose(result.loss[rows], margins[rows, k_end[rows]], atol=1e-4)
    # y = 1, 2: a single vertex, the global optimum.
    single = robust & (np.asarray(y) != 0)
    assert single.any()
    np.testing.assert_allclose(result.loss[single], best[single], atol=1e-4)

    # Same shapes, another radius and key: no new trace (chex), and a larger ball breaks more.
    wider, _ = _run(variables, x, y, jax.random.split(jax.random.key(1), len(y)), 0.2)
    assert np.asarray(wider.success).sum() >= result.success.sum()
    np.testing.assert_array_equal(
        np.asarray(wider.success), _vertex_margins(variables, x, y, 0.2)[1].max(1) > 0
    )


def test_vmapped_over_the_batch_and_monotone_in_steps(problem):
    # 10 steps, each example attacked alone under vmap (per-example keys): its run is a prefix
    # of the batched 50-step run, whose best-so-far can only be as good or better.
    variables, x, y = problem
    eps = 0.05
    keys = jax.random.split(jax.random.key(0), len(y))
    short = spsa(eps, step_size=0.2 * eps, steps=10, num_samples=64)
    one = lambda xi, yi, ki: short.run(model_fn, variables, xi[None], yi[None], ki[None])  # noqa: E731
    res10 = jax.tree.map(lambda a: np.asarray(a)[:, 0], jax.jit(jax.vmap(one))(x, y, keys))
    res50, _ = jax.tree.map(np.asarray, _run(variables, x, y, keys, eps))
    assert (res50.success | ~res10.success).all()
    still = ~res10.success
    assert (res50.loss[still] >= res10.loss[still] - 1e-5).all()
    assert (res50.loss[still] > res10.loss[still] + 1e-3).any()  # 40 more steps did something
    flat = res10.x_adv.reshape(len(y), -1) - np.asarray(x).reshape(len(y), -1)
    assert (np.abs(flat) <= eps + 1e-6).all()


def test_registry_and_bad_arguments():
    assert attacks.build({"name": "spsa", "eps": 0.1}) == spsa(0.1)
    assert spsa(0.1).scaled(0.5) == spsa(0.05, step_size=0.005)
    with pytest.raises(ValueError, match="delta"):
        spsa(0.1, delta=0.0)
    with pytest.raises(ValueError, match="num_samples"):
        spsa(0.1, num_samples=0)
    with pytest.raises(ValueError, match="hinge"):
        spsa(0.1, loss="hinge")
