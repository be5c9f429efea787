"""B&B (Linf): the trust-region step against closed forms, and the attack on a linear model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from advjax import attacks
from advjax.attacks.brendel_bethge import logit_difference, solve_linf_step

solve = jax.jit(solve_linf_step)


def test_step_reaches_the_hyperplane_at_the_closed_form_linf_distance():
    # Box and trust region inactive: min ||d||_inf s.t. g . d = c is |c| / ||g||_1.
    g = jnp.asarray(np.random.default_rng(0).normal(size=64), jnp.float32)
    x0 = jnp.full(64, 0.5)
    for c in (0.3, -0.2):
        delta = solve(x0, x0, g, jnp.asarray(c), jnp.asarray(100.0))
        np.testing.assert_allclose(jnp.max(jnp.abs(delta)), abs(c) / jnp.sum(jnp.abs(g)), rtol=1e-4)
        np.testing.assert_allclose(g @ delta, c, rtol=1e-4)


def test_step_out_of_reach_moves_the_full_radius_along_the_normal():
    g = jnp.asarray(np.random.default_rng(1).normal(size=64), jnp.float32)
    x0 = jnp.full(64, 0.5)
    delta = solve(x0, x0, g, jnp.asarray(-5.0), jnp.asarray(0.01))
    np.testing.assert_allclose(jnp.linalg.norm(delta), 0.01, rtol=1e-4)
    cosine = -(g @ delta) / (jnp.linalg.norm(g) * jnp.linalg.norm(delta))
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    c=st.floats(-0.5, 0.5),
    radius=st.floats(0.01, 3.0),
)
def test_step_respects_the_box_the_trust_region_and_the_hyperplane(seed, c, radius):
    rng = np.random.default_rng(seed)
    x0 = jnp.asarray(rng.uniform(0, 1, size=32), jnp.float32)
    x = jnp.clip(x0 + jnp.asarray(rng.uniform(-0.2, 0.2, size=32), jnp.float32), 0, 1)
    g = jnp.asarray(rng.normal(size=32), jnp.float32)
    delta = solve(x0, x, g, jnp.asarray(c, jnp.float32), jnp.asarray(radius, jnp.float32))
    z = x + delta
    assert jnp.all(z >= -1e-6) and jnp.all(z <= 1 + 1e-6)
    assert jnp.linalg.norm(delta) <= radius * (1 + 1e-4) + 1e-6
    # Either on the hyperplane, or as far towards it as the constraints allow (never past it).
    reached = g @ delta
    assert abs(float(reached - c)) <= 1e-3 * (1 + abs(c)) or abs(float(reached)) < abs(c)
    assert float(reached) * c >= -1e-6


def _linear_problem(n=12, side=6, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    d = side * side
    variables = {
        "w": jnp.asarray(rng.normal(size=(d, classes)), jnp.float32),
        "b": jnp.zeros(classes, jnp.float32),
    }

    def model_fn(v, x):
        return x.reshape(x.shape[0], -1) @ v["w"] + v["b"]

    x = jnp.asarray(rng.uniform(0.4, 0.6, size=(n, side, side, 1)), jnp.float32)
    logits = model_fn(variables, x)
    y = jnp.argmax(logits, axis=-1)
    # Closed form (the box does not bind at these margins): the smallest Linf perturbation to
    # class k is (f_y - f_k) / ||w_y - w_k||_1; B&B must find the minimum over k.
    w = variables["w"].T
    margins = logits[jnp.arange(n), y][:, None] - logits
    l1 = jnp.sum(jnp.abs(w[y][:, None, :] - w[None, :, :]), axis=-1)
    exact = jnp.min(jnp.where(jax.nn.one_hot(y, classes) > 0, jnp.inf, margins / l1), axis=-1)
    assert float(jnp.max(exact)) < 0.35  # the box [0, 1] does not bind around x in [0.4, 0.6]
    return model_fn, variables, x, y, exact


def test_finds_the_analytic_minimum_linf_distance_of_a_linear_model():
    # Two classes: one hyperplane, so B&B's local boundary walk must reach the global minimum.
    model_fn, variables, x, y, exact = _linear_problem(classes=2)
    run = jax.jit(attacks.brendel_bethge(steps=200).run, static_argnums=0)
    found = -run(model_fn, variables, x, y, jax.random.key(0)).loss
    np.testing.assert_allclose(found, exact, rtol=0.01)


def test_walks_to_the_nearest_point_of_the_class_boundary_it_follows():
    # Ten classes: the adversarial set is a union of half-spaces and B&B is a local method; it
    # ends on the nearest point of the boundary it walks along, never below the global minimum.
    model_fn, variables, x, y, exact = _linear_problem(classes=10)
    result = jax.jit(attacks.brendel_bethge(steps=200).run, static_argnums=0)(
        model_fn, variables, x, y, jax.random.key(0)
    )
    found = -result.loss
    assert jnp.all(found >= exact * (1 - 1e-4))
    logits = model_fn(variables, x)
    to = jnp.argmax(model_fn(variables, result.x_adv), axis=-1)
    w = variables["w"].T
    margin = logits[jnp.arange(len(y)), y] - logits[jnp.arange(len(y)), to]
    np.testing.assert_allclose(found, margin / jnp.sum(jnp.abs(w[y] - w[to]), axis=-1), rtol=0.02)


def test_logit_difference_is_negative_exactly_on_adversarial_points():
    logits = jnp.asarray([[3.0, 1.0, 0.0], [1.0, 2.0, 0.0]])
    np.testing.assert_allclose(logit_difference(logits, jnp.asarray([0, 0]), False), [2.0, -1.0])
    np.testing.assert_allclose(logit_difference(logits, jnp.asarray([1, 1]), True), [2.0, -1.0])


def test_budgeted_result_and_bad_arguments():
    model_fn, variables, x, y, exact = _linear_problem(n=4, classes=2, seed=1)
    eps = float(jnp.median(exact))
    result = attacks.brendel_bethge(eps).run(model_fn, variables, x, y, jax.random.key(1))
    np.testing.assert_array_equal(result.success, exact <= eps)
    broken = jnp.argmax(model_fn(variables, result.x_adv), -1) != y
    np.testing.assert_array_equal(broken, result.success)
    assert float(jnp.max(jnp.abs(result.x_adv - x))) <= eps + 1e-6
    with pytest.raises(ValueError, match="overshoot"):
        attacks.brendel_bethge(overshoot=2.5)
    with pytest.raises(ValueError, match="eps"):
        attacks.brendel_bethge(eps=-0.1)
