"""WRM (Sinha et al. 2018; thesis Eq. 2.41): closed-form maximisers of ``loss - gamma ||x'-x||^2``
on linear/quadratic losses, the first-order condition ``grad loss = 2 gamma (x' - x)`` for CE,
the reference ``attacks_tf.py`` loop in NumPy, monotonicity in gamma, the [0, 1] box, jit/vmap
equivalences, a traced gamma, the registry and the WRM defense (``pgd_at`` with this attack)."""

from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from advjax import attacks, defenses, losses
from advjax.attacks.wrm import WRM, gamma_from_eps, transport_cost, wrm
from advjax.models import init_variables, make_model_fn
from tests.conftest import linear_model_fn

SHAPE = (6, 8, 8, 1)
KEY = jax.random.key(0)


@pytest.fixture(scope="module")
def problem():
    """A softmax-regression model with small weights (smooth CE) and interior images."""
    k_w, k_b, k_x = jax.random.split(jax.random.key(0), 3)
    variables = {
        "w": 0.3 * jax.random.normal(k_w, (64, 10)),
        "b": 0.1 * jax.random.normal(k_b, (10,)),
    }
    x = jax.random.uniform(k_x, SHAPE, minval=0.3, maxval=0.7)
    y = jnp.arange(SHAPE[0]) % 10
    return variables, x, y


_jit_run = jax.jit(lambda a, f, *args: a.run(f, *args), static_argnums=(0, 1))


def _run(attack, variables, x, y, key=KEY, model_fn=linear_model_fn):
    """``attack.run`` under ``jit`` (eager attacks are slow on CPU)."""
    return _jit_run(attack, model_fn, variables, x, y, key)


@functools.partial(jax.jit, static_argnums=0)
def _with_gamma(steps, gamma, variables, x, y):
    """``wrm(gamma, steps=steps)`` with ``gamma`` traced: one compilation for every gamma."""
    attack = wrm(1.0, steps=steps, unroll=1).with_gamma(gamma)
    return attack.run(linear_model_fn, variables, x, y, KEY)


def _ce_grad(variables, x_adv, y):
    return jax.grad(lambda z: jnp.sum(losses.cross_entropy(linear_model_fn(variables, z), y)))(
        x_adv
    )


def _centered(variables, x):
    """A model whose "logits" are ``vec(x) - c``: quadratic losses of ``x`` around ``c``."""
    return x.reshape(x.shape[0], -1) - variables["c"].reshape(x.shape[0], -1)


# ----------------------------------------------------------------------------------------------
# Closed forms and optimality


@pytest.mark.parametrize("steps", [1, 16])
def test_linear_loss_maximiser_is_x_plus_w_over_2_gamma(problem, steps):
    """``loss = w . x'``: ``argmax w . x' - gamma ||x' - x||^2 = x + w / (2 gamma)``, reached by
    the first (rate 1) step and a fixed point afterwards."""
    variables, x, y = problem
    gamma = 2.0
    attack = wrm(gamma, steps=steps, loss=lambda logits, y: logits[:, 3], unroll=1)
    x_adv = _run(attack, variables, x, y).x_adv
    expected = x + (variables["w"][:, 3] / (2 * gamma)).reshape(1, 8, 8, 1)
    assert 0.0 < float(expected.min()) and float(expected.max()) < 1.0  # box inactive
    np.testing.assert_allclose(x_adv, expected, atol=1e-6)


@pytest.mark.parametrize("curvature", [1.0, -1.0])
def test_quadratic_loss_maximiser_is_the_closed_form(problem, curvature):
    """``loss = s/2 ||x' - c||^2`` (convex ``s = 1`` or concave ``s = -1``), ``gamma = 1``:
    ``x* = (2 gamma x - s c) / (2 gamma - s)``."""
    _, x, y = problem
    c = jnp.clip(x + 0.1 * jax.random.normal(jax.random.key(5), x.shape), 0.0, 1.0)
    gamma = 1.0
    attack = wrm(
        gamma,
        steps=200,
        loss=lambda z, y: 0.5 * curvature * jnp.sum(z * z, axis=1),
        unroll=1,
    )
    x_adv = _run(attack, {"c": c}, x, y, model_fn=_centered).x_adv
    expected = (2 * gamma * x - curvature * c) / (2 * gamma - curvature)
    assert 0.0 < float(expected.min()) and float(expected.max()) < 1.0
    np.testing.assert_allclose(x_adv, expected, atol=2e-5)


@pytest.mark.parametrize("gamma", [2.0, 4.0, 8.0])
def test_ce_maximiser_satisfies_grad_loss_equals_2_gamma_delta(problem, gamma):
    variables, x, y = problem
    x_adv = _with_gamma(100, gamma, variables, x, y).x_adv
    assert 0.0 < float(x_adv.min()) and float(x_adv.max()) < 1.0  # interior: no box multiplier
    residual = _ce_grad(variables, x_adv, y) - 2 * gamma * (x_adv - x)
    np.testing.assert_allclose(residual, 0.0, atol=5e-5)
    # The default 16 reference steps are close to the fixed point already.
    x16 = _with_gamma(16, gamma, variables, x, y).x_adv
    assert float(jnp.max(jnp.abs(x16 - x_adv))) < 5e-3
    # ... and phi is no higher at nearby points (a local maximum).
    attack = wrm(gamma)
    phi = attack.penalized_objective(linear_model_fn, variables, x_adv, x, y)
    for seed in range(3):
        nudge = 1e-2 * jax.random.normal(jax.random.key(seed), x.shape)
        other = attack.penalized_objective(linear_model_fn, variables, x_adv + nudge, x, y)
        assert bool(jnp.all(other <= phi + 1e-6))


def test_reference_attacks_tf_loop_in_numpy(problem):
    """Sinha et al.'s ``wrm`` (``attacks_tf.py``, eps = 0.5 / gamma, its ``steps=15``), no box:
    ``x + eps grad``, then ``x_adv += (eps grad - (x_adv - x)) / sqrt(t + 2)``, 15 times."""
    variables, x, y = problem
    w, b = np.asarray(variables["w"], np.float64), np.asarray(variables["b"], np.float64)
    x0 = np.asarray(x, np.float64).reshape(SHAPE[0], -1)
    onehot = np.eye(10)[np.asarray(y)]

    def grad(z):
        logits = z @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return (p - onehot) @ w.T

    gamma = 0.4
    eps = 0.5 / gamma
    x_adv = x0 + eps * grad(x0)
    for t in range(15):
        x_adv = x_adv + 1.0 / np.sqrt(t + 2) * (eps * grad(x_adv) - (x_adv - x0))
    ours = _run(wrm(gamma, steps=16, clip=False, unroll=1), variables, x, y).x_adv
    np.testing.assert_allclose(np.asarray(ours).reshape(SHAPE[0], -1), x_adv, atol=2e-5)
    assert gamma_from_eps(eps) == pytest.approx(gamma)
    assert float(wrm(gamma).eps) == pytest.approx(eps)


def test_larger_gamma_gives_smaller_transport_cost(problem):
    variables, x, y = problem
    gammas = jnp.asarray([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0])
    results = jax.vmap(lambda g: _with_gamma(100, g, variables, x, y))(gammas)  # vmap over gamma
    costs = jax.vmap(transport_cost, (0, None))(results.x_adv, x)
    assert np.all(np.diff(costs, axis=0) < 0), costs  # per example, strictly decreasing
    assert np.all(np.diff(results.loss, axis=0) < 0)  # ... and so does the loss it buys


def test_box_is_respected_and_the_reference_clip_free_loop_leaves_it(problem):
    variables, x, y = problem
    gamma = 0.02  # WRM's eps = 25: far outside the box without the clip
    x_adv = _with_gamma(16, gamma, variables, x, y).x_adv
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert bool(jnp.any(x_adv == 0.0)) and bool(jnp.any(x_adv == 1.0))  # the box binds
    free = _run(wrm(gamma, clip=False, unroll=1), variables, x, y).x_adv
    assert float(free.min()) < 0.0 or float(free.max()) > 1.0


# ----------------------------------------------------------------------------------------------
# Contract: jit, vmap, traced gamma, scaling, targeted


def test_jit_equals_no_jit_and_a_traced_gamma_compiles_once(problem):
    variables, x, y = problem
    attack = wrm(1.0, steps=4)  # the default full unroll
    eager = attack(linear_model_fn, variables, x, y, KEY)
    jitted = jax.jit(attack, static_argnums=0)(linear_model_fn, variables, x, y, KEY)
    np.testing.assert_allclose(jitted, eager, atol=1e-6)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(gamma, x):
        return attack.with_gamma(gamma)(linear_model_fn, variables, x, y, KEY)

    np.testing.assert_allclose(run(jnp.float32(1.0), x), eager, atol=1e-6)
    direct = jax.jit(wrm(3.0, steps=4), static_argnums=0)(linear_model_fn, variables, x, y, KEY)
    np.testing.assert_allclose(run(jnp.float32(3.0), x), direct, atol=1e-6)


def test_vmap_over_examples_equals_the_batch(problem):
    variables, x, y = problem
    attack = wrm(1.0, unroll=1)
    keys = jax.random.split(KEY, x.shape[0])
    whole = _run(attack, variables, x, y, keys).x_adv
    one_by_one = jax.jit(
        jax.vmap(lambda xi, yi, k: attack(linear_model_fn, variables, xi[None], yi[None], k[None]))
    )(x, y, keys)[:, 0]
    np.testing.assert_allclose(whole, one_by_one, atol=1e-6)
    # ... and over stacked ensemble members, as every attack.
    members = [jax.tree.map(lambda a, i=i: a * (1.0 + 0.2 * i), variables) for i in range(2)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *members)
    batched = jax.jit(jax.vmap(lambda v: attack(linear_model_fn, v, x, y, KEY)))(stacked)
    for i, member in enumerate(members):
        np.testing.assert_allclose(batched[i], _run(attack, member, x, y).x_adv, atol=1e-6)


def test_scaled_budget_multiplies_eps_and_zero_returns_x(problem):
    variables, x, y = problem
    attack = wrm(1.0, unroll=1)
    scaled = jax.jit(lambda f: attack.scaled(f)(linear_model_fn, variables, x, y, KEY))
    np.testing.assert_array_equal(scaled(0.0), x)  # a warm-up's first step: no perturbation
    np.testing.assert_allclose(scaled(0.5), _with_gamma(16, 2.0, variables, x, y).x_adv, atol=1e-6)
    assert attack.scaled(0.0).eps == 0.0 and attack.scaled(0.5).eps == wrm(2.0).eps


def test_result_reports_the_loss_and_success_at_x_adv(problem):
    variables, x, y = problem
    result = _with_gamma(16, 0.5, variables, x, y)
    logits = linear_model_fn(variables, result.x_adv)
    np.testing.assert_allclose(result.loss, losses.cross_entropy(logits, y), rtol=1e-5)
    np.testing.assert_array_equal(result.success, jnp.argmax(logits, -1) != y)
    clean = losses.cross_entropy(linear_model_fn(variables, x), y)
    assert bool(jnp.all(result.loss > clean))
    targeted = _run(wrm(0.5, targeted=True, unroll=1), variables, x, y)
    assert bool(jnp.all(targeted.loss > -clean))  # the negated loss was increased


# ----------------------------------------------------------------------------------------------
# Registry, errors, defense


def test_registry_builds_it_from_a_spec():
    spec = {"name": "wrm", "gamma": 0.5, "steps": 8, "schedule": "constant", "step_size": 0.5}
    built = attacks.build(spec)
    assert isinstance(built, WRM)
    assert built == wrm(0.5, steps=8, schedule="constant", step_size=0.5)
    assert attacks.build(ml_collections.ConfigDict(spec)) == built
    hash(built)
    assert attacks.hyperparameters("wrm")[0] == "gamma"
    assert attacks.ATTACKS["wrm"] is wrm


@pytest.mark.parametrize("gamma", [0.0, -1.0, float("nan"), None])
def test_bad_gamma_is_a_clear_error(gamma):
    with pytest.raises(ValueError, match="gamma must be > 0"):
        wrm(gamma)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        attacks.build({"name": "wrm", "gamma": gamma})


def test_other_bad_hyperparameters_are_clear_errors():
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        wrm(1.0, steps=0)
    with pytest.raises(ValueError, match="step_size must be > 0"):
        wrm(1.0, step_size=0.0)
    with pytest.raises(ValueError, match="unknown schedule 'cosine'"):
        wrm(1.0, schedule="cosine")
    with pytest.raises(ValueError, match="unknown hyperparameter.*eps for attack 'wrm'"):
        attacks.build({"name": "wrm", "gamma": 1.0, "eps": 0.3})


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        del train
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


def test_wrm_defense_is_pgd_at_on_the_robust_ce_with_this_attack():
    """WRM trains on ``CE(f(x'), y)`` alone (the reference ``model_train`` with ``p = 1``):
    ``pgd_at(wrm(gamma))`` with its default ``clean_weight = 0``; also under a warm-up."""
    model = _Tiny()
    variables = init_variables(model, jax.random.key(0), (4, 4, 1))
    x = jax.random.uniform(jax.random.key(1), (8, 4, 4, 1))
    batch = {"image": x, "label": jnp.arange(8) % 3}
    keys = jax.random.split(jax.random.key(2), 8)
    spec = {"name": "wrm", "gamma": 0.5, "steps": 4}
    defense = defenses.build({"name": "pgd_at", "attack": spec, "eps_warmup_steps": 10})
    assert defense == defenses.pgd_at(wrm(0.5, steps=4), eps_warmup_steps=10, clean_weight=0.0)
    run = jax.jit(lambda step: defense(model, variables, batch, keys, step=step)[0])
    loss, half = run(jnp.int32(10)), run(jnp.int32(5))  # full budget; eps = 0.5 / gamma halved
    model_fn = make_model_fn(model)
    x_adv = jax.jit(wrm(0.5, steps=4), static_argnums=0)(
        model_fn, variables, x, batch["label"], keys
    )
    expected = jnp.mean(losses.cross_entropy(model_fn(variables, x_adv), batch["label"]))
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    clean = jnp.mean(losses.cross_entropy(model_fn(variables, x), batch["label"]))
    assert float(clean) < float(half) < float(loss)
