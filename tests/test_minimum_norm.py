"""C&W L2 and DDN: closed-form minimal L2 distances on linear models, the eps convention,
targeted success, jit/eager and per-example-key batch independence, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax.attacks.minimum_norm import cw_l2, ddn
from advjax.threats import lp_norm
from tests.conftest import linear_model_fn
from tests.test_fab import _distances, _linear_problem


def _binary_problem(num=6):
    variables = {
        "w": jax.random.normal(jax.random.key(3), (64, 2)),
        "b": jnp.array([0.3, -0.2]),
    }
    x = jax.random.uniform(jax.random.key(1), (num, 8, 8, 1), minval=0.2, maxval=0.8)
    return variables, x, jnp.argmax(linear_model_fn(variables, x), axis=-1)


def _check_minimum_norm_result(variables, x, y, result, optimum, eps, rtol):
    """Close to the optimum from above; success iff within eps; x where not; in the box."""
    found = -np.asarray(result.loss)
    assert np.all(found >= optimum * (1 - 1e-5))
    assert np.all(found <= optimum * (1 + rtol))
    ok = np.asarray(result.success)
    np.testing.assert_array_equal(ok, found <= eps)
    assert 0 < ok.sum() < len(ok)
    np.testing.assert_allclose(
        np.asarray(lp_norm(result.x_adv - x, "l2"))[ok], found[ok], rtol=1e-4
    )
    np.testing.assert_array_equal(np.asarray(result.x_adv)[~ok], np.asarray(x)[~ok])
    pred = jnp.argmax(linear_model_fn(variables, result.x_adv), axis=-1)
    np.testing.assert_array_equal(pred != y, ok)
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1


def test_cw_l2_reaches_the_closed_form_distance():
    variables, x, y = _linear_problem()
    optimum = _distances(variables, x, y, "l2").min(axis=1)  # (z_y - z_j) / ||w_y - w_j||
    eps = float(np.median(optimum))
    # The distances here are small (0.02 - 0.15 over 64 pixels), so Adam needs a smaller step
    # than the default 0.01 to resolve them.
    attack = cw_l2(eps, step_size=1e-3, steps=200)
    result = jax.jit(attack.run, static_argnums=0)(
        linear_model_fn, variables, x, y, jax.random.key(0)
    )
    _check_minimum_norm_result(variables, x, y, result, optimum, eps, rtol=0.01)


def test_ddn_reaches_the_closed_form_distance_on_a_binary_model():
    # With two classes the cross-entropy gradient is parallel to w_y - w_j, so DDN's fixed
    # direction is the optimal one (with more classes it is a mix of class normals).
    variables, x, y = _binary_problem()
    optimum = _distances(variables, x, y, "l2").min(axis=1)
    eps = float(np.median(optimum))
    result = jax.jit(ddn(eps=eps).run, static_argnums=0)(
        linear_model_fn, variables, x, y, jax.random.key(0)
    )
    _check_minimum_norm_result(variables, x, y, result, optimum, eps, rtol=0.01)


@pytest.mark.parametrize(
    "attack",
    [cw_l2(steps=100, binary_search_steps=5, targeted=True), ddn(steps=50, targeted=True)],
    ids=["cw_l2", "ddn"],
)
def test_targeted_attacks_reach_the_target(attack):
    variables, x, y = _linear_problem(6)
    targets = (y + 3) % 10
    result = jax.jit(attack.run, static_argnums=0)(
        linear_model_fn, variables, x, targets, jax.random.key(0)
    )
    assert bool(jnp.all(result.success))
    np.testing.assert_array_equal(jnp.argmax(linear_model_fn(variables, result.x_adv), -1), targets)
    # The target region lies inside the half-space {z_t >= z_y}: at least that far.
    half_space = _distances(variables, x, y, "l2")[np.arange(6), np.asarray(targets)]
    assert np.all(-np.asarray(result.loss) >= half_space * (1 - 1e-5))
    np.testing.assert_allclose(lp_norm(result.x_adv - x, "l2"), -result.loss, rtol=1e-4)


@pytest.mark.parametrize(
    "attack",
    [cw_l2(step_size=0.05, steps=40, binary_search_steps=3), ddn(steps=10, levels=256)],
    ids=["cw_l2", "ddn"],
)
def test_jit_eager_and_other_batches_agree_and_compile_once(attack):
    variables, x, y = _linear_problem(6)
    y = y.at[0].set((y[0] + 1) % 10)  # misclassified already: success at zero distance
    keys = jax.random.split(jax.random.key(3), x.shape[0])
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(variables, x, y, keys):
        return attack.run(linear_model_fn, variables, x, y, keys)

    jitted = run(variables, x, y, keys)
    eager = attack.run(linear_model_fn, variables, x, y, keys)
    np.testing.assert_allclose(eager.x_adv, jitted.x_adv, atol=1e-6)
    np.testing.assert_allclose(eager.loss, jitted.loss, rtol=1e-5)
    np.testing.assert_array_equal(eager.success, jitted.success)
    assert bool(jitted.success[0]) and float(jitted.loss[0]) == 0.0
    np.testing.assert_array_equal(jitted.x_adv[0], x[0])
    assert bool(jnp.all(jitted.success))
    # Per-example state (C&W: per-example binary search and early abort; DDN: per-example
    # norms and keys): rows 0-2 moved and the other rows replaced give the same rows 0-2.
    _, fresh, fresh_y = _linear_problem(9)
    order = jnp.array([2, 0, 1, 6, 7, 8])
    other = run(
        variables,
        jnp.concatenate([x, fresh])[order],
        jnp.concatenate([y, fresh_y])[order],
        jnp.concatenate([keys, keys[:3]])[order],
    )
    np.testing.assert_allclose(other.x_adv[:3], jitted.x_adv[jnp.array([2, 0, 1])], atol=1e-6)
    np.testing.assert_allclose(other.loss[:3], jitted.loss[jnp.array([2, 0, 1])], rtol=1e-5)
    if getattr(attack, "levels", None):  # quantised DDN iterates lie on the 8-bit grid
        grid = np.asarray(jitted.x_adv[1:]) * 255
        np.testing.assert_allclose(grid, np.round(grid), atol=1e-3)


def test_bad_arguments_give_clear_errors():
    variables, x, y = _linear_problem(2)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        cw_l2(steps=0)
    with pytest.raises(ValueError, match="binary_search_steps"):
        cw_l2(binary_search_steps=1.5)
    with pytest.raises(ValueError, match="initial_const must be > 0"):
        cw_l2(initial_const=0.0)
    with pytest.raises(ValueError, match="confidence must be >= 0"):
        cw_l2(confidence=-1.0)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        cw_l2(eps=-1.0)
    with pytest.raises(ValueError, match="gamma must be in"):
        ddn(gamma=1.0)
    with pytest.raises(ValueError, match="levels must be an integer >= 2"):
        ddn(levels=1)
    with pytest.raises(ValueError, match="init_norm must be >= 0"):
        ddn(init_norm=-1.0)
    with pytest.raises(ValueError, match="integer labels"):
        ddn(steps=1).run(linear_model_fn, variables, x, (y, y), jax.random.key(0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cw_l2(steps=1).run(linear_model_fn, variables, x * 255, y, jax.random.key(0))
    assert ddn(eps=1.0).scaled(0.5).eps == 0.5 and cw_l2().scaled(0.5).eps is None
