"""Un-T (margin PGD) and Multi-T (multi-targeted PGD): closed forms, loops, invariants, errors."""

import dataclasses
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advjax import attacks, losses
from advjax.attacks import combinators
from advjax.attacks import multitarget as mt
from advjax.attacks.base import better
from advjax.threats import LpBall
from tests.conftest import linear_model_fn

EPS, STEP = 0.05, 0.0125  # MLP problems
LIN_EPS, LIN_STEP, LIN_STEPS = 0.008, 0.002, 10  # 10 sign steps of eps/4 saturate every coordinate


@functools.partial(jax.jit, static_argnums=(0, 1))
def jit_run(attack, model_fn, variables, x, y, key):
    """One compilation per (attack, model) shared by the tests."""
    return attack.run(model_fn, variables, x, y, key)


def mlp_fn(variables, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ variables["w1"] + variables["b1"])
    return h @ variables["w2"] + variables["b2"]


@pytest.fixture(scope="module")
def mlp():
    k1, k2, k3 = jax.random.split(jax.random.key(7), 3)
    variables = {
        "w1": jax.random.normal(k1, (64, 16)) * 0.5,
        "b1": jnp.zeros(16),
        "w2": jax.random.normal(k2, (16, 10)),
        "b2": 0.1 * jax.random.normal(k3, (10,)),
    }
    x = jax.random.uniform(jax.random.key(8), (5, 8, 8, 1), minval=0.1, maxval=0.9)
    y = jnp.argmax(mlp_fn(variables, x), -1)
    return variables, x, y


@pytest.fixture
def linear_problem(linear_model):
    _, variables = linear_model
    x = jax.random.uniform(jax.random.key(1), (8, 8, 8, 1), minval=0.2, maxval=0.8)
    y = jnp.argmax(linear_model_fn(variables, x), -1)  # correctly classified at x
    return variables, x, y


def closed_form(variables, x, y, eps):
    """Per target t != y: the maximiser x*_t = x + eps sign(w_t - w_y) and z_t - z_y there."""
    w = variables["w"]
    flat = x.reshape(x.shape[0], -1)
    u = w.T[None, :, :] - w.T[y][:, None, :]  # [B, K, D]: w_t - w_y
    x_star = flat[:, None, :] + eps * jnp.sign(u)  # the box is inactive (x in [0.2, 0.8])
    logits = jnp.einsum("bkd,dj->bkj", x_star, w) + variables["b"]  # [B, K(target), K]
    clean = linear_model_fn(variables, x)
    best = clean - jnp.take_along_axis(clean, y[:, None], 1) + eps * jnp.sum(jnp.abs(u), -1)
    fooled = jnp.argmax(logits, -1) != y[:, None]
    return best, fooled  # [B, K] each (the t = y column is meaningless)


def test_defaults_come_from_atlas_and_thesis():
    unt = mt.untargeted(8 / 255)
    assert isinstance(unt, attacks.Restarts) and unt.restarts == 10  # ATLAS Sec. 6
    assert unt.attack.steps == 100 and unt.attack.loss == "margin"
    assert unt.attack.random_init and unt.attack.keep_best
    np.testing.assert_allclose(unt.attack.step_size, 2 / 255)  # thesis Sec. 3.6: eps / 4
    multi = mt.multitargeted(8 / 255)
    assert (multi.steps, multi.restarts, multi.num_targets) == (20, 5, None)
    np.testing.assert_allclose(multi.step_size, 2 / 255)
    assert multi == mt.multitargeted(
        8 / 255, 2 / 255, 20, norm="linf", num_targets=None, restarts=5
    )
    assert mt.multitargeted(0.5, norm="l2").threat == LpBall("l2", 0.5)
    hash(multi)


def test_untargeted_is_margin_pgd(mlp):
    variables, x, y = mlp
    # Un-T is PGD on the margin loss (with restarts): the very same attack objects.
    assert mt.untargeted(EPS, STEP, 7, restarts=1) == attacks.pgd(EPS, STEP, 7, loss="margin")
    assert mt.untargeted(EPS, STEP, 7, norm="l2", restarts=3) == attacks.restarts(
        attacks.pgd(EPS, STEP, 7, norm="l2", loss="margin"), 3
    )
    attack = mt.untargeted(EPS, STEP, 2, restarts=2, unroll=1)
    result = jit_run(attack, mlp_fn, variables, x, y, jax.random.key(0))
    # The loss at x_adv is the margin with the best wrong class re-chosen there.
    logits = mlp_fn(variables, result.x_adv)
    np.testing.assert_allclose(result.loss, losses.margin(logits, y), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.success, jnp.argmax(logits, -1) != y)


def test_select_targets_top_k(linear_problem):
    variables, x, y = linear_problem
    logits = linear_model_fn(variables, x)
    every = jax.jit(mt.select_targets, static_argnums=2)(logits, y, None)
    assert every.shape == (9, x.shape[0]) and every.dtype == jnp.int32
    for b in range(x.shape[0]):
        order = [int(c) for c in np.argsort(-np.asarray(logits[b])) if c != int(y[b])]
        assert [int(t) for t in every[:, b]] == order
    np.testing.assert_array_equal(mt.select_targets(logits, y, 3), every[:3])
    with pytest.raises(ValueError, match="num_targets .* at most num_classes - 1 = 9"):
        mt.select_targets(logits, y, 10)


def test_multitargeted_reaches_the_closed_form_per_target(linear_problem):
    variables, x, y = linear_problem
    attack = mt.multitargeted(LIN_EPS, LIN_STEP, LIN_STEPS, restarts=2, unroll=1)
    targets, per_target = jax.jit(attack.run_per_target, static_argnums=0)(
        linear_model_fn, variables, x, y, jax.random.key(0)
    )
    best, fooled = closed_form(variables, x, y, LIN_EPS)
    expected = jnp.take_along_axis(best, targets.T, 1).T  # [T, B]
    np.testing.assert_allclose(per_target.loss, expected, atol=1e-4)
    np.testing.assert_array_equal(per_target.success, jnp.take_along_axis(fooled, targets.T, 1).T)
    # The attack's worst case: success first, then the highest targeted margin (``run`` is this
    # reduction of ``run_per_target``; test_multitargeted_equals_a_loop_of_targeted_pgd runs it).
    result = combinators.reduce_worst(per_target)
    mask = jnp.arange(10)[None, :] != y[:, None]
    any_fooled = jnp.any(fooled & mask, 1)
    np.testing.assert_array_equal(result.success, any_fooled)
    assert 0 < int(result.success.sum()) < x.shape[0]  # a mix, so both branches are exercised
    score = jnp.where(mask & (fooled | ~any_fooled[:, None]), best, -jnp.inf)
    np.testing.assert_allclose(result.loss, jnp.max(score, 1), atol=1e-4)
    # x_adv is the vertex of the ball that maximises the chosen target's margin.
    np.testing.assert_allclose(jnp.abs(result.x_adv - x), LIN_EPS, atol=1e-6)
    chosen = jnp.argmax(score, 1)
    reached = mt.targeted_margin(linear_model_fn(variables, result.x_adv), y, chosen)
    np.testing.assert_allclose(reached, result.loss, atol=1e-4)


def test_multitargeted_equals_a_loop_of_targeted_pgd(mlp):
    variables, x, y = mlp
    key = jax.random.key(3)
    attack = mt.multitargeted(EPS, STEP, 3, num_targets=3, restarts=2, unroll=1)
    result = jit_run(attack, mlp_fn, variables, x, y, key)
    targets = mt.select_targets(mlp_fn(variables, x), y, 3)
    keys = attacks.split_keys(key, 3)

    @jax.jit
    def targeted_pgd(targets, key):
        loss = functools.partial(mt.targeted_margin, targets=targets)
        pgd = attacks.pgd(EPS, STEP, 3, loss=loss, unroll=1)
        return attacks.restarts(pgd, 2).run(mlp_fn, variables, x, y, key)

    best = targeted_pgd(targets[0], keys[0])
    for i in (1, 2):
        run = targeted_pgd(targets[i], keys[i])
        take = better(run.success, run.loss, best.success, best.loss)
        best = jax.tree.map(
            lambda a, b, take=take: jnp.where(take.reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
            run,
            best,
        )
    chex.assert_trees_all_close(result, best, atol=1e-6)


def test_never_weaker_than_untargeted_with_the_same_budget(linear_problem):
    variables, x, y = linear_problem
    key = jax.random.key(5)
    multi = mt.multitargeted(LIN_EPS, LIN_STEP, LIN_STEPS, restarts=1, unroll=1)
    others = (
        mt.untargeted(LIN_EPS, LIN_STEP, LIN_STEPS, restarts=1, unroll=1),
        attacks.pgd(LIN_EPS, LIN_STEP, LIN_STEPS, unroll=1),  # CE PGD
    )

    @jax.jit
    def run_all(factor):  # one compilation for every budget (eps and step scaled together)
        return [
            a.scaled(factor).run(linear_model_fn, variables, x, y, key) for a in (multi, *others)
        ]

    zero, *_ = run_all(0.0)  # a zero budget leaves x unchanged
    np.testing.assert_array_equal(zero.x_adv, x)
    assert not bool(jnp.any(zero.success))
    for factor in (0.5, 1.0, 2.0):
        mt_result, *other_results = run_all(factor)
        for other in other_results:
            assert bool(jnp.all(mt_result.success >= other.success)), factor
            margin = losses.margin(linear_model_fn(variables, other.x_adv), y)
            both_fail = ~mt_result.success & ~other.success
            assert bool(jnp.all(jnp.where(both_fail, mt_result.loss >= margin - 1e-4, True)))
    assert 0 < int(run_all(1.0)[0].success.sum()) < x.shape[0]


def test_jit_matches_eager_per_example_keys_and_no_retrace(mlp):
    variables, x, y = mlp
    attack = mt.multitargeted(EPS, STEP, 2, num_targets=2, restarts=2, unroll=1)
    keys = jax.random.split(jax.random.key(0), x.shape[0])

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(variables, x, y, key):
        return attack.run(mlp_fn, variables, x, y, key)

    whole = run(variables, x, y, keys)
    # Per-example keys: an example's result depends neither on its position in the batch nor on
    # the other examples (same shapes, so these calls also check that nothing is retraced).
    perm = jnp.array([3, 0, 4, 1, 2])
    permuted = run(variables, x[perm], y[perm], keys[perm])
    chex.assert_trees_all_close(permuted, jax.tree.map(lambda a: a[perm], whole), atol=1e-6)
    swap = jnp.array([0, 1, 2, 3, 1])  # the last example replaced by a copy of the second
    mixed = run(variables, x[swap], y[swap], keys[swap])
    chex.assert_trees_all_close(mixed, jax.tree.map(lambda a: a[swap], whole), atol=1e-6)
    # Eager (op by op, so kept small; targets vmapped) equals jitted with the targets run in
    # chunks by lax.map: no-jit == jit, and chunking does not change the computation.
    small = dataclasses.replace(attack, steps=1, restarts=1)
    chunked = dataclasses.replace(small, target_batch_size=1)
    chex.assert_trees_all_close(
        small.run(mlp_fn, variables, x, y, keys),
        jit_run(chunked, mlp_fn, variables, x, y, keys),
        atol=1e-6,
    )


def test_scaled_budget():
    attack = mt.multitargeted(0.1, 0.02, 3)
    half = attack.scaled(0.5)
    assert half.threat.eps == pytest.approx(0.05) and half.step_size == pytest.approx(0.01)
    assert (half.steps, half.restarts) == (attack.steps, attack.restarts)


def test_errors(mlp):
    variables, x, y = mlp
    with pytest.raises(ValueError, match="restarts must be a positive integer"):
        mt.multitargeted(0.1, restarts=0)
    with pytest.raises(ValueError, match="restarts must be a positive integer"):
        mt.untargeted(0.1, restarts=1.5)
    with pytest.raises(ValueError, match="num_targets must be None or a positive integer"):
        mt.multitargeted(0.1, num_targets=0)
    with pytest.raises(ValueError, match="target_batch_size must be None or a positive"):
        mt.multitargeted(0.1, target_batch_size=-2)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        mt.multitargeted(-0.1)
    with pytest.raises(ValueError, match="steps must be an integer"):
        mt.multitargeted(0.1, steps=2.5)
    with pytest.raises(ValueError, match="valid norms"):
        mt.untargeted(0.1, norm="l3")
    with pytest.raises(ValueError, match=r"integer labels y of shape \[B\]"):
        mt.multitargeted(0.1, steps=1).run(mlp_fn, variables, x, (y, y), jax.random.key(0))
    with pytest.raises(ValueError, match="at most num_classes - 1"):
        mt.multitargeted(0.1, steps=1, num_targets=12).run(
            mlp_fn, variables, x, y, jax.random.key(0)
        )
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mt.multitargeted(0.1, steps=1)(mlp_fn, variables, x * 255, y, jax.random.key(0))
