"""HopSkipJump (decision-based, L2 and Linf) against the closed-form minimal distances of a linear
binary classifier.

The model's boundary is one hyperplane ``w . x + b = 0``; at interior points (the box inactive)
the smallest adversarial perturbation has L2 norm ``|w . x + b| / ||w||_2`` and Linf norm
``|w . x + b| / ||w||_1``. HopSkipJump only reads the predicted label, and every point it keeps is
adversarial: it can approach these distances but never beat them.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks
from advjax.attacks.hop_skip_jump import (
    binary_search_halvings,
    eval_schedule,
    hop_skip_jump,
)

D, B, STEPS = 64, 8, 40


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    w = rng.normal(size=D).astype(np.float32)
    x = rng.uniform(0.4, 0.6, (B, 8, 8, 1)).astype(np.float32)
    flat = x.reshape(B, -1).astype(np.float64)
    b = np.float32(-np.mean(flat @ w))  # the boundary passes between the points
    variables = {
        "w": jnp.asarray(np.stack([np.zeros(D), w], 1), jnp.float32),
        "b": jnp.asarray([0.0, b], jnp.float32),
    }
    margin = np.abs(flat @ w + b)
    exact = {"l2": margin / np.linalg.norm(w), "linf": margin / np.abs(w).sum()}
    assert exact["linf"].max() < 0.4 and exact["l2"].max() < 0.4  # the box does not bind
    y = (flat @ w + b > 0).astype(np.int32)
    return variables, jnp.asarray(x), jnp.asarray(y), exact


def model_fn(variables, x):
    return x.reshape(x.shape[0], -1) @ variables["w"] + variables["b"]


def _attack(norm, eps):
    return hop_skip_jump(1.0, STEPS, norm=norm).scaled(eps)


@functools.cache
def _runner(norm):
    """One jitted HopSkipJump per norm, eps traced (``scaled``), from given starts (``x`` itself
    where there is none: not adversarial, so the noise search runs): one trace for every call."""

    def run(variables, x, y, keys, eps, start):
        return _attack(norm, eps).run_from(model_fn, variables, x, y, keys, start)

    run.__name__ = f"hsj_{norm}"  # chex counts traces per name
    return jax.jit(chex.assert_max_traces(run, n=1))


def _run(norm, variables, x, y, seed, eps, start=None):
    keys = jax.random.split(jax.random.key(seed), x.shape[0])
    start = x if start is None else start
    result, queries = _runner(norm)(variables, x, y, keys, np.float32(eps), start)
    return jax.tree.map(np.asarray, result), np.asarray(queries)


def _norms(delta, norm):
    flat = np.asarray(delta, np.float64).reshape(delta.shape[0], -1)
    return np.abs(flat).max(1) if norm == "linf" else np.linalg.norm(flat, axis=1)


# L2: within 2% of the minimal distance after 40 steps (measured, keys 0-2: 0.5-0.9%); Linf:
# within 3% (measured: 0.6-1.9%).
@pytest.mark.parametrize("norm,slack", [("l2", 1.02), ("linf", 1.03)])
def test_approaches_the_closed_form_distance_and_never_beats_it(problem, norm, slack):
    variables, x, y, exact = problem
    exact = exact[norm]
    result, queries = _run(norm, variables, x, y, 0, 1.0)  # eps = 1: every found point counts
    found = -result.loss
    assert (found >= exact * (1 - 1e-5)).all(), found / exact
    assert (found <= exact * slack).all(), found / exact
    assert result.success.all()
    np.testing.assert_allclose(_norms(result.x_adv - np.asarray(x), norm), found, rtol=1e-5)
    logits = np.asarray(model_fn(variables, jnp.asarray(result.x_adv)))
    assert (logits.argmax(1) != np.asarray(y)).all()  # adversarial, from the label alone
    assert ((result.x_adv >= 0) & (result.x_adv <= 1)).all()
    # Queries: the clean point and the start, the noise draws and 10 blend halvings, the binary
    # searches, sum_t n_t decisions for the estimates and at least one step-size check per step.
    halvings = binary_search_halvings(norm, D, 1.0)
    fixed = 2 + 10 + (STEPS + 1) * halvings + int(eval_schedule(STEPS, 100, 10000).sum())
    assert (queries >= fixed + 1 + STEPS).all() and (queries <= fixed + 31 * STEPS + 100).all()

    # The eps convention, same trace: success where the smallest adversarial is within eps.
    eps = float(np.median(found))
    budgeted, _ = _run(norm, variables, x, y, 0, eps)
    np.testing.assert_array_equal(budgeted.success, found <= eps)
    np.testing.assert_allclose(budgeted.loss, result.loss)  # -norm, whatever eps
    kept = budgeted.success[:, None, None, None]
    np.testing.assert_array_equal(np.where(kept, np.asarray(x), budgeted.x_adv), np.asarray(x))


def test_misclassified_points_and_points_without_a_start(problem):
    variables, x, y, _ = problem
    # A misclassified point succeeds at once, with x itself and norm 0.
    flipped = np.asarray(y).copy()
    flipped[0] = 1 - flipped[0]
    result, _ = _run("l2", variables, x, jnp.asarray(flipped), 1, 0.01)
    assert result.success[0] and result.loss[0] == 0.0
    np.testing.assert_array_equal(result.x_adv[0], np.asarray(x)[0])
    # A constant classifier has no adversarial point: no start, no success, loss -inf, x kept.
    constant = {"w": jnp.zeros_like(variables["w"]), "b": jnp.asarray([1.0, 0.0])}
    result, queries = _run("l2", constant, x, jnp.zeros_like(y), 1, 1.0)
    assert not result.success.any() and np.isneginf(result.loss).all()
    np.testing.assert_array_equal(result.x_adv, np.asarray(x))
    assert (queries == 2 + 100).all()  # the clean point, the start and 100 noise draws, no more


def test_given_start_and_vmap_over_the_batch(problem):
    variables, x, y, exact = problem
    # A start far on the other side of the boundary: x moved 3x the minimal distance along the
    # normal. HopSkipJump walks back towards the closest point.
    w = np.asarray(variables["w"][:, 1])
    sign = np.where(np.asarray(y) == 1, -1.0, 1.0)[:, None]
    start = np.asarray(x).reshape(B, -1) + 3 * exact["l2"][:, None] * sign * w / np.linalg.norm(w)
    result, _ = _run("l2", variables, x, y, 2, 1.0, jnp.asarray(start.reshape(x.shape)))
    found = -result.loss
    assert (found >= exact["l2"] * (1 - 1e-5)).all() and (found <= 1.02 * exact["l2"]).all()
    # vmap over the batch: each example attacked alone with its key gives the batch's result.
    keys = jax.random.split(jax.random.key(0), B)
    attack = _attack("l2", 1.0)
    one = lambda xi, yi, ki: attack.run(model_fn, variables, xi[None], yi[None], ki[None])  # noqa: E731
    alone = jax.tree.map(lambda a: np.asarray(a)[:, 0], jax.jit(jax.vmap(one))(x, y, keys))
    batched, _ = _run("l2", variables, x, y, 0, 1.0)
    assert alone.success.all()
    np.testing.assert_allclose(alone.loss, batched.loss, rtol=1e-5)  # measured: identical


def test_registry_and_bad_arguments():
    assert attacks.build({"name": "hop_skip_jump", "norm": "linf"}) == hop_skip_jump(norm="linf")
    assert hop_skip_jump(0.5).scaled(2.0) == hop_skip_jump(1.0)
    assert hop_skip_jump().scaled(2.0) == hop_skip_jump()
    np.testing.assert_array_equal(eval_schedule(4, 100, 150), [100, 141, 150, 150])
    with pytest.raises(ValueError, match="norm 'l1'"):
        hop_skip_jump(norm="l1")
    with pytest.raises(ValueError, match="max_num_evals"):
        hop_skip_jump(init_num_evals=100, max_num_evals=10)
    with pytest.raises(ValueError, match="gamma"):
        hop_skip_jump(gamma=0.0)
